"""The model zoo: one file per model on the shared `Recommender` interface (`base`), shared layers in
`layers`, the neural training loop in `neural`, the cold-session fallback in `fallback`, and `zoo`, the
names the CLI, the stream and checkpoints use. May use `model.data`, `model.metrics` and `model.training`;
never `model.lifecycle`. A model added to the zoo is checked by tests/model/test_contract.py for free."""
