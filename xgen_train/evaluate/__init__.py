"""After training: evaluation (perplexity by position, pass@k, energy), KV-cache generation, Figure 1."""
