"""The model: config, the LLaMA forward in Haiku, attention kernels, precision policy, next-token loss,
and the numerics options of a train step."""
