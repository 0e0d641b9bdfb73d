"""xgen_data: corpus manager, tokenizer, filters, dedup, mixtures, packing and shards (SPEC §1–§2).

Importing it before pyarrow makes the system allocator Arrow's default memory pool (``ARROW_DEFAULT_MEMORY_POOL``,
unless set already; it is read when pyarrow loads, so a process that imported pyarrow first keeps its pool):
the steps read and free one Parquet part or row group after another, and Arrow's default pool (mimalloc) keeps
freed pages, so peak RSS would grow with the number of parts read (``benchmarks/bench_growth.py`` measures it).
"""
import os as _os
import sys as _sys

if "pyarrow" not in _sys.modules:
    _os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
