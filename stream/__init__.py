"""nextclick's streaming side: the Faust app, the inference service, the trainer loop and the CLI."""
