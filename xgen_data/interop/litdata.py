"""litdata ``optimize`` output for ``TokensLoader``: ``chunk-0-<i>.bin`` files plus ``index.json``, the layout
``litdata.streaming.writer.BinaryWriter(item_loader=TokensLoader())`` writes for uint16 token tensors.

A chunk: ``uint32 num_items``, ``uint32 offsets[num_items + 1]`` (absolute byte offsets), then the items;
an item is one packed row, ``seq_len`` uint16 tokens with no header (data format ``no_header_tensor:20``,
``torch.uint16`` in ``litdata.constants._TORCH_DTYPES_MAPPING``). ``index.json`` lists each chunk's
``chunk_bytes``, ``chunk_size`` (items), ``dim`` (tokens) and ``filename``, and the writer's ``config``;
``updated_at`` (litdata's cache key for a dataset's version) is the SHA-256 of the chunks' hashes, so the
same rows give the same bytes. ``TokensLoader(block_size=seq_len)`` then yields exactly the packed rows.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np

from xgen_data.interop.files import HashingWriter, write_bytes
from xgen_data.interop.source import Dataset, RowStream

CHUNK_BYTES = 64_000_000  # litdata's "64MB"
DATA_FORMAT = "no_header_tensor:20"  # torch.uint16
DATA_SPEC = '[1, {"type": null, "context": null, "children_spec": []}]'  # treespec of one tensor leaf


def config(chunk_bytes: int = CHUNK_BYTES) -> dict:
    """BinaryWriter.get_config() for uncompressed uint16 token tensors read by TokensLoader."""
    return {"chunk_bytes": chunk_bytes, "chunk_size": None, "compression": None, "compression_batch_size": None,
            "compression_level": None, "data_format": [DATA_FORMAT], "data_spec": DATA_SPEC, "encryption": None,
            "ipc_compression": None, "item_loader": "TokensLoader", "types": "tensor"}


def _chunk_head(n: int, seq_len: int) -> bytes:
    header = 4 + 4 * (n + 1)
    offsets = header + np.arange(n + 1, dtype=np.int64) * 2 * seq_len
    return np.uint32(n).tobytes() + offsets.astype(np.uint32).tobytes()


def write_dataset(shard_dir: str, ds: Dataset, out_root: str, chunk_bytes: int = CHUNK_BYTES) -> dict:
    """Write ``<out_root>/<stage>/<substage>/<split>/`` as a litdata dataset, one item per packed row.

    Returns:
        ``{"path": the folder (relative), "files": {rel: sha256}, "samples": rows, "tokens": tokens}``.
    """
    per_chunk = max(1, chunk_bytes // (2 * ds.seq_len))
    total = ds.n_sequences
    files, chunks = {}, []
    rows = RowStream(shard_dir, ds)
    for k, start in enumerate(range(0, total, per_chunk)):
        n = min(per_chunk, total - start)
        name = f"chunk-0-{k}.bin"
        with HashingWriter(out_root, f"{ds.name}/{name}") as w:
            w.write(_chunk_head(n, ds.seq_len))
            for piece in rows.take(n):
                w.write(piece)
            files[w.rel] = w.close()
            chunks.append({"chunk_bytes": w.size, "chunk_size": n, "dim": n * ds.seq_len, "filename": name})
    version = hashlib.sha256("".join(files.values()).encode()).hexdigest()
    index = json.dumps({"chunks": chunks, "config": config(chunk_bytes), "updated_at": version}, sort_keys=True)
    rel, digest = write_bytes(out_root, f"{ds.name}/index.json", index.encode("utf-8"))
    files[rel] = digest
    return {"path": ds.name, "files": files, "samples": total, "tokens": total * ds.seq_len}
