"""Per-document attributes computed once: filters, license decisions per policy, language, exact and MinHash dedup."""
