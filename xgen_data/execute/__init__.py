"""Data steps as units of work and the executors that run them (datatrove's step/executor seam)."""
