"""nextclick's model side: session data, models, training, evaluation and checkpoints (pure PyTorch, no Kafka)."""
