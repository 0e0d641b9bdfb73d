"""Megatron-LM / Megatron-Core indexed dataset (``.bin`` + ``.idx``), the format of
``megatron.core.datasets.indexed_dataset`` (``IndexedDatasetBuilder`` / ``_IndexWriter``).

``.bin``: the tokens, little-endian uint16, sequence after sequence. ``.idx``::

    b"MMIDIDX\\x00\\x00"      9 bytes, the header
    <Q 1                      version
    <B 8                      dtype code (8 = uint16, ``DType.uint16``)
    <Q sequence_count
    <Q document_count         number of entries of document_indices (documents + 1)
    int32[sequence_count]     sequence lengths (tokens)
    int64[sequence_count]     sequence pointers (byte offsets into .bin)
    int64[document_count]     document indices: 0, then the sequence index ending each document

``unit="sequence"``: one sequence (and one document) per packed row, ``seq_len`` tokens each, so Megatron's
GPTDataset (which concatenates documents and cuts its own samples) sees the stream xgen packed.
``unit="document"``: each row is cut after every EOS, so each sequence is one document piece ending in its
EOS (or at the row's end); a document cut across rows stays two pieces (rows are shuffled at packing).
"""
from __future__ import annotations

import struct

import numpy as np

from xgen_data.errors import InputError
from xgen_data.interop.files import HashingWriter, write_bytes
from xgen_data.interop.source import Dataset, row_blocks

INDEX_HEADER = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
DTYPE_CODE_UINT16 = 8  # megatron.core.datasets.indexed_dataset.DType.uint16
UNITS = ("sequence", "document")


def piece_lengths(block: np.ndarray, eos_id: int) -> np.ndarray:
    """Lengths of the pieces of ``block`` (uint16 ``[rows, seq_len]``) cut at row ends and after each EOS.

    Returns int32 ``[pieces]``; they sum to ``block.size`` and keep the row-major order of the tokens.
    """
    rows, seq_len = block.shape
    flat = block.reshape(-1)
    cuts = np.union1d(np.arange(1, rows + 1, dtype=np.int64) * seq_len,
                      np.flatnonzero(flat == eos_id).astype(np.int64) + 1)
    return np.diff(np.concatenate([[0], cuts])).astype(np.int32)


def index_bytes(lengths: np.ndarray, itemsize: int = 2) -> bytes:
    """The ``.idx`` file for sequences of ``lengths`` (int32), one document per sequence."""
    lengths = np.asarray(lengths, dtype=np.int32)
    pointers = np.zeros(lengths.size, dtype=np.int64)
    if lengths.size:
        np.cumsum(lengths[:-1].astype(np.int64) * itemsize, out=pointers[1:])
    doc_idx = np.arange(lengths.size + 1, dtype=np.int64)
    head = INDEX_HEADER + struct.pack("<Q", INDEX_VERSION) + struct.pack("<B", DTYPE_CODE_UINT16)
    counts = struct.pack("<Q", lengths.size) + struct.pack("<Q", doc_idx.size)
    return head + counts + lengths.tobytes() + pointers.tobytes() + doc_idx.tobytes()


def write_dataset(shard_dir: str, ds: Dataset, out_root: str, eos_id: int, unit: str = "sequence") -> dict:
    """Write ``<out_root>/<stage>/<substage>/<split>.bin`` and ``.idx`` for one dataset.

    Returns:
        ``{"path": the --data-path prefix (relative), "files": {rel: sha256}, "samples": sequences written,
        "tokens": tokens written}``.
    """
    if unit not in UNITS:
        raise InputError(f"unit must be one of {UNITS}, got {unit!r}")
    lengths = []
    with HashingWriter(out_root, ds.name + ".bin") as w:
        for block in row_blocks(shard_dir, ds):
            w.write(block)
            if unit == "sequence":
                lengths.append(np.full(block.shape[0], ds.seq_len, dtype=np.int32))
            else:
                lengths.append(piece_lengths(block, eos_id))
        bin_sha = w.close()
        tokens = w.size // 2
    lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int32)
    idx_rel, idx_sha = write_bytes(out_root, ds.name + ".idx", index_bytes(lengths))
    return {"path": ds.name, "files": {ds.name + ".bin": bin_sha, idx_rel: idx_sha},
            "samples": int(lengths.size), "tokens": int(tokens)}
