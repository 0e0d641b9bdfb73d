"""Shards for other trainers (Megatron-LM, MosaicML streaming, litdata, Hugging Face datasets) and the data
card / training-content summary of a shards folder."""
