"""The model: config, the LLaMA forward in Haiku, attention kernels, precision policy, next-token loss."""
