"""Packing kept documents into shuffled sequences, and the shard format (manifest, .bin, index)."""
