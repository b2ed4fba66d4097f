"""Training: configs and presets, optimizers and schedules, the training loop, the TensorBoard mirror."""
