"""Training: the model, the loop, checkpoints, metrics, the LR finder, devices."""
