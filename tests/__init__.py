"""The test suite: tests/model/ for model/, tests/stream/ for stream/, the user-path tests at the top. A
package, so that tests/model and tests/stream never shadow the real `model` and `stream` packages."""
