"""The training loop: curriculum, shard loader, optimizer, the update step, trainer, checkpoints."""
