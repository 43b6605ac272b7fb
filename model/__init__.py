"""nextclick's model side, pure PyTorch with no Kafka: it never imports `stream`.

Layers, each importing only those before it: `errors`; `data/` (session data, readers, the synthetic
world); `metrics` (full-ranking evaluation); `training/` (what fitting uses: optimiser, data-parallel,
CPU runtime, hyperparameters); `models/` (the zoo on one `Recommender` interface); `lifecycle/` (a model by
name from build to retirement: train and evaluate, checkpoint, registry, session log, retraining).
"""
