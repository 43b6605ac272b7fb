"""What fitting a model uses, model-agnostic: the GRU4Rec optimiser, data-parallel training, the CPU
runtime's tuning and hyperparameters from JSON/TOML/`--set`. May use `model.data` and `model.errors`, never
`model.models` (the models use it, not the other way round)."""
