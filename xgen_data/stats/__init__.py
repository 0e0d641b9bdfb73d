"""SQL over the corpus (DuckDB views, read-only guard), result formatting, plots."""
