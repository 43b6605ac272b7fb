"""The Faust worker: the pipeline (agent, session table, expiry, rebalance repair), click validation, the
inference service and its hot swap, the changelog reader and the transport tuned for this product. May use
`model`, `stream.kafka`, `stream.settings` and `stream.metrics`; nothing imports it but the CLI and
`stream.app`."""
