"""Training: losses, optimizers and schedules (registries in effdet.train.optim), EMA, workers, the loop."""
