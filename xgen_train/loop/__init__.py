"""The training loop: curriculum, shard loader, optimizer, numerics, the update step, trainer, checkpoints."""
