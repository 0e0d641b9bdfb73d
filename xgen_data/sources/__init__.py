"""Where documents come from: file readers and layouts, ingest into the corpus, the duplicate-id check, the embedded demo corpus."""
