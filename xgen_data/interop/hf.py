"""Hugging Face datasets Parquet: one ``input_ids`` column (``list<int32>``), one row per packed row.

Each dataset is ``<stage>/<substage>/<split>.parquet``; the export's ``README.md`` (the data card) lists
them as configs (``<stage>-<substage>``) with their splits in its YAML header, so
``datasets.load_dataset(OUT, "<stage>-<substage>", split="train")`` reads them.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from xgen_data.interop.files import HashingWriter
from xgen_data.interop.source import Dataset, row_blocks

SCHEMA = pa.schema([("input_ids", pa.list_(pa.int32()))])
ROW_GROUP_BYTES = 8 << 20  # int32 bytes per row group (bounded memory)


def _table(block: np.ndarray) -> pa.Table:
    rows, seq_len = block.shape
    values = pa.array(block.reshape(-1).astype(np.int32))
    offsets = pa.array(np.arange(rows + 1, dtype=np.int32) * seq_len)
    return pa.Table.from_arrays([pa.ListArray.from_arrays(offsets, values)], schema=SCHEMA)


def config_name(ds: Dataset) -> str:
    """The dataset card's config name of a dataset: ``<stage>-<substage>``."""
    return f"{ds.stage}-{ds.substage}"


def write_dataset(shard_dir: str, ds: Dataset, out_root: str) -> dict:
    """Write ``<out_root>/<stage>/<substage>/<split>.parquet`` (zstd, no statistics: same bytes for same rows;
    no dictionary encoding: token ids have too many distinct values for it to pay).

    Returns:
        ``{"path": the file (relative), "files": {rel: sha256}, "samples": rows, "tokens": tokens}``.
    """
    rel = ds.name + ".parquet"
    with HashingWriter(out_root, rel) as w:
        sink = pa.PythonFile(w, mode="w")
        with pq.ParquetWriter(sink, SCHEMA, compression="zstd", use_dictionary=False,
                              write_statistics=False) as pw:
            for block in row_blocks(shard_dir, ds, block_bytes=ROW_GROUP_BYTES // 2):
                pw.write_table(_table(block), row_group_size=block.shape[0])
        digest = w.close()
    return {"path": rel, "files": {rel: digest}, "samples": ds.n_sequences, "tokens": ds.n_tokens}
