"""A model's life by name: built, fitted and evaluated on a data set (`experiment`: what `nextclick train`
and `eval` run), saved (`checkpoint`: safetensors + JSON), published and rolled back (`registry`), and
retrained on the stream's logged sessions (`sessionlog`, `retrain`). May use everything else in `model`."""
