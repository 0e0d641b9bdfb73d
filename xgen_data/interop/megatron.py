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
import tempfile

import numpy as np

from xgen_data.errors import InputError
from xgen_data.interop.files import HashingWriter
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


def _chunks(f, itemsize: int, dtype: str, chunk: int = 1 << 18):
    """Read the file ``f`` from its start as arrays of at most ``chunk`` items."""
    f.seek(0)
    while data := f.read(chunk * itemsize):
        yield np.frombuffer(data, dtype=dtype)


def write_index(w: HashingWriter, lengths_file, n: int, itemsize: int = 2) -> None:
    """Write the ``.idx`` for ``n`` sequences whose int32 lengths are in ``lengths_file``, one document per
    sequence, streaming (memory holds one chunk of lengths, not all of them)."""
    w.write(INDEX_HEADER + struct.pack("<Q", INDEX_VERSION) + struct.pack("<B", DTYPE_CODE_UINT16))
    w.write(struct.pack("<Q", n) + struct.pack("<Q", n + 1))
    for lengths in _chunks(lengths_file, 4, "<i4"):
        w.write(lengths)
    start = np.int64(0)
    for lengths in _chunks(lengths_file, 4, "<i4"):
        ends = np.cumsum(lengths.astype(np.int64) * itemsize) + start
        w.write(np.concatenate([[start], ends[:-1]]).astype("<i8"))
        start = ends[-1]
    for first in range(0, n + 1, 1 << 18):
        w.write(np.arange(first, min(n + 1, first + (1 << 18)), dtype="<i8"))


def write_dataset(shard_dir: str, ds: Dataset, out_root: str, eos_id: int, unit: str = "sequence") -> dict:
    """Write ``<out_root>/<stage>/<substage>/<split>.bin`` and ``.idx`` for one dataset.

    The sequence lengths go to an unnamed temporary file beside the output while the ``.bin`` is written, then
    the ``.idx`` is composed from it, so memory does not grow with the number of sequences.

    Returns:
        ``{"path": the --data-path prefix (relative), "files": {rel: sha256}, "samples": sequences written,
        "tokens": tokens written}``.
    """
    if unit not in UNITS:
        raise InputError(f"unit must be one of {UNITS}, got {unit!r}")
    n = 0
    with tempfile.TemporaryFile(dir=out_root) as lengths_file:
        with HashingWriter(out_root, ds.name + ".bin") as w:
            for block in row_blocks(shard_dir, ds):
                w.write(block)
                lengths = (np.full(block.shape[0], ds.seq_len, dtype="<i4") if unit == "sequence"
                           else piece_lengths(block, eos_id).astype("<i4"))
                lengths_file.write(lengths.tobytes())
                n += lengths.size
            bin_sha = w.close()
            tokens = w.size // 2
        with HashingWriter(out_root, ds.name + ".idx") as w:
            write_index(w, lengths_file, n)
            idx_sha = w.close()
    return {"path": ds.name, "files": {ds.name + ".bin": bin_sha, ds.name + ".idx": idx_sha},
            "samples": n, "tokens": int(tokens)}
