"""Using a trained model: load it once (model.py), then evaluate, predict or export it."""
