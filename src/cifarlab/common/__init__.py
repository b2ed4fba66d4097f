"""Shared by training and inference: the run directory, distributed processes, logits and their scores."""
