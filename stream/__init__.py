"""nextclick's streaming side: Kafka, Faust and Prometheus around the models of `model`.

`worker/` is the Faust app and everything on its per-click path; `kafka/` the brokers and the clients the
CLI, demo and trainer use; `settings` the one settings mechanism (flags > environment > defaults) and the
topic names; `metrics` every Prometheus metric and the one /metrics reader; `processes` child processes;
`trainer`, `cli`, `demo` the commands; `app` the entry module for `faust -A stream.app worker`. `model`
never imports from here, and nothing here imports `tests/`.
"""
