"""Instruction tuning data (SPEC §5): record shapes, XGen rendering, token masks, packing, decontamination,
long-context examples, and the SFT shard format the trainer reads."""
