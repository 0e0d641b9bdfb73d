"""MosaicML streaming MDS (``index.json`` + ``shard.NNNNN.mds``), byte for byte what
``streaming.MDSWriter(columns={"tokens": "ndarray:uint16:<seq_len>"}, hashes=["sha256"])`` writes.

A shard file (``JointWriter``): ``uint32 num_samples``, ``uint32 offsets[num_samples + 1]`` (absolute byte
offsets of the samples), the writer's config as JSON (sorted keys), then the samples. A ``tokens`` column of
fixed dtype and shape has no per-sample size header, so a sample is its ``seq_len`` uint16 tokens. A shard
holds as many samples as fit ``size_limit`` (MDSWriter's rule: header bytes + 4 + sample bytes per sample).
``index.json``: ``{"shards": [...], "version": 2}``, each shard's config plus ``samples``, ``raw_data``
(``basename``, ``bytes``, ``hashes: {"sha256": hex}``) and ``zip_data: null``.
"""
from __future__ import annotations

import json

import numpy as np

from xgen_data.interop.files import HashingWriter, write_bytes
from xgen_data.interop.source import Dataset, RowStream

SIZE_LIMIT = 1 << 26  # MDSWriter's default shard size limit (bytes)
EXTRA_BYTES_PER_SAMPLE = 4  # MDSWriter.extra_bytes_per_sample (the sample's offset)


def config(seq_len: int, size_limit: int = SIZE_LIMIT) -> dict:
    """MDSWriter.get_config() for one fixed-shape uint16 ``tokens`` column with sha256 hashes."""
    return {"version": 2, "format": "mds", "compression": None, "hashes": ["sha256"], "size_limit": size_limit,
            "column_names": ["tokens"], "column_encodings": [f"ndarray:uint16:{seq_len}"],
            "column_sizes": [2 * seq_len]}


def samples_per_shard(seq_len: int, size_limit: int = SIZE_LIMIT) -> int:
    """How many ``seq_len`` samples MDSWriter puts in one shard before it starts the next."""
    cfg = json.dumps(config(seq_len, size_limit), sort_keys=True).encode("utf-8")
    room = size_limit - (8 + len(cfg))
    return max(1, room // (2 * seq_len + EXTRA_BYTES_PER_SAMPLE))


def _shard_head(n: int, seq_len: int, cfg: bytes) -> bytes:
    header = 4 + 4 * (n + 1) + len(cfg)
    offsets = header + np.arange(n + 1, dtype=np.uint32) * np.uint32(2 * seq_len)
    return np.uint32(n).tobytes() + offsets.astype(np.uint32).tobytes() + cfg


def write_dataset(shard_dir: str, ds: Dataset, out_root: str, size_limit: int = SIZE_LIMIT) -> dict:
    """Write ``<out_root>/<stage>/<substage>/<split>/`` as an MDS dataset, one sample per packed row.

    Returns:
        ``{"path": the folder (relative), "files": {rel: sha256}, "samples": rows, "tokens": tokens}``.
    """
    cfg_obj = config(ds.seq_len, size_limit)
    cfg = json.dumps(cfg_obj, sort_keys=True).encode("utf-8")
    per_shard = samples_per_shard(ds.seq_len, size_limit)
    total = ds.n_sequences
    files, shards = {}, []
    rows = RowStream(shard_dir, ds)
    for k, start in enumerate(range(0, total, per_shard)):
        n = min(per_shard, total - start)
        basename = f"shard.{k:05}.mds"
        with HashingWriter(out_root, f"{ds.name}/{basename}") as w:
            w.write(_shard_head(n, ds.seq_len, cfg))
            for piece in rows.take(n):
                w.write(piece)
            digest = w.close()
            files[w.rel] = digest
            shards.append({"samples": n, "raw_data": {"basename": basename, "bytes": w.size,
                                                      "hashes": {"sha256": digest}},
                           "zip_data": None, **cfg_obj})
    index = json.dumps({"version": 2, "shards": shards}, sort_keys=True).encode("utf-8")
    rel, digest = write_bytes(out_root, f"{ds.name}/index.json", index)
    files[rel] = digest
    return {"path": ds.name, "files": files, "samples": total, "tokens": total * ds.seq_len}
