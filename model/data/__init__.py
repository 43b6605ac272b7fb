"""Session data: the item vocabulary, sessions and test samples as flat arrays, the contract's three
formats (safe unpickling for the SR-GNN pickles), the seeded synthetic world and `load_data` for any of
them. Uses numpy and pandas and `model.errors` only: no torch, no models."""
