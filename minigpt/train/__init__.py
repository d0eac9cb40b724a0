"""Training: the configuration, the loop, optimizers, checkpoints, parallelism and the run's log."""
