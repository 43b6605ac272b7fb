"""The Faust worker: the pipeline (agent, session table, expiry, rebalance repair), click validation, the
inference service and its hot swap, the changelog reader, the transport tuned for this product, and
`process`, the worker run as a child process (tests, benchmarks). May use `model`, `stream.kafka`,
`stream.settings`, `stream.metrics` and `stream.processes`; nothing imports it but the CLI, `stream.app`,
the tests and the benchmarks."""
