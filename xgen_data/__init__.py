"""xgen_data: corpus manager, tokenizer, filters, dedup, mixtures, packing and shards (SPEC §1–§2)."""
