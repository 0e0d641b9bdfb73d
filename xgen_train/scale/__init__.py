"""Training at scale: device mesh and partition rules, multi-host start, FLOPs and MFU."""
