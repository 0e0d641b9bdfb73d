"""The duplicate-id check of ingest: 64-bit hashes of document ids in sorted runs, in memory then on disk.

Each known id is one 16-byte entry (its hash and where the document is: a source number and a row), instead
of a Python string in a set (~100 bytes and more). Hashes are Python's 64-bit string hash (:func:`hash_ids`),
used only within one run and never kept after it.

New hashes are added as sorted runs in memory, merged when a newer run is at least half as long as the one
before it (a log-structured merge: adding ``n`` ids costs ``O(n log n)`` in all). Once the runs in memory
hold more than ``memory_entries`` entries they are merged into one sorted run written to ``spill_dir``
(a NumPy ``.npy`` file of 16-byte records, read back memory-mapped), so the memory an index holds is bounded
by ``memory_entries × 16`` bytes whatever the number of ids; disk runs are searched in place (binary search
on the mapped file, a few pages per lookup). A lookup is one binary search per run.

A hash match is only a candidate: :class:`IdIndex` returns every stored entry with the same hash, and
the caller compares the real ids (two different ids with one hash must not drop a document).
"""
from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import pyarrow as pa

#: One entry: the id hash, the source (part) number and the row in it.
ENTRY = np.dtype([("h", "<u8"), ("s", "<u4"), ("r", "<u4")])
#: Entries the runs in memory may hold before they are written to disk (16 MiB).
MEMORY_ENTRIES = 1 << 20


def hash_ids(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """``uint64[n]``: Python's 64-bit string hash (SipHash) of each id; equal ids hash equally within a process.

    The hash is salted per process (``PYTHONHASHSEED``), which is fine here: an index lives for one run and
    is never stored, and a salted hash cannot be steered into collisions by crafted ids. ~0.1 µs per id.
    """
    return np.fromiter((hash(x) for x in ids.to_pylist()), dtype=np.int64, count=len(ids)).view(np.uint64)


class IdIndex:
    """A multiset of id hashes, each with ``(source, row)``: ``source`` numbers a part file, ``row`` a row in it.

    Args:
        spill_dir: folder for the runs written to disk (created if needed); default a new temporary folder
            (made on the first spill). :meth:`close` (or the ``with`` block) deletes the files it wrote, and
            the folder when the index made it.
        memory_entries: entries the in-memory runs may hold before they go to disk (bounds the memory);
            default :data:`MEMORY_ENTRIES`.
    """

    def __init__(self, spill_dir: str | None = None, memory_entries: int | None = None) -> None:
        memory_entries = MEMORY_ENTRIES if memory_entries is None else memory_entries
        if memory_entries < 1:
            raise ValueError(f"memory_entries must be >= 1, got {memory_entries}")
        self._runs: list[np.ndarray] = []  # sorted ENTRY arrays in memory
        self._disk: list[np.ndarray] = []  # sorted ENTRY memmaps
        self._files: list[str] = []
        self._spill_dir, self._own_dir = spill_dir, None
        self.memory_entries = int(memory_entries)

    def __enter__(self) -> "IdIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Drop every entry and delete the files written to disk."""
        self._runs, self._disk = [], []
        for f in self._files:
            if os.path.exists(f):
                os.remove(f)
        self._files = []
        if self._own_dir is not None:
            shutil.rmtree(self._own_dir, ignore_errors=True)
            self._own_dir = None

    def __len__(self) -> int:
        return sum(len(r) for r in self._runs) + sum(len(r) for r in self._disk)

    @property
    def nbytes(self) -> int:
        """Memory held by the in-memory runs, in bytes (disk runs are mapped, not held)."""
        return sum(r.nbytes for r in self._runs)

    @property
    def disk_runs(self) -> int:
        """Number of runs written to disk so far."""
        return len(self._disk)

    def add(self, hashes: np.ndarray, source: int | np.ndarray, rows: np.ndarray) -> None:
        """Add ``hashes`` (``uint64[n]``) found in ``source`` (one number, or ``uint32[n]``) at ``rows``."""
        if len(hashes) == 0:
            return
        run = np.empty(len(hashes), dtype=ENTRY)
        run["h"] = np.asarray(hashes, dtype=np.uint64)
        run["s"] = np.broadcast_to(np.asarray(source, dtype=np.uint32), run.shape)
        run["r"] = np.asarray(rows, dtype=np.uint32)
        self._runs.append(run[np.argsort(run["h"], kind="stable")])
        while len(self._runs) > 1 and len(self._runs[-2]) <= 2 * len(self._runs[-1]):
            b, a = self._runs.pop(), self._runs.pop()
            self._runs.append(_merge(a, b))
        if sum(len(r) for r in self._runs) > self.memory_entries:
            self._spill()

    def _spill(self) -> None:
        run = self._runs[0]
        for r in self._runs[1:]:
            run = _merge(run, r)
        self._runs = []
        if self._spill_dir is None:
            self._own_dir = self._spill_dir = tempfile.mkdtemp(prefix="xgen-idindex-")
        if not os.path.isdir(self._spill_dir):
            os.makedirs(self._spill_dir)
            self._own_dir = self._spill_dir  # made here: removed by close()
        path = os.path.join(self._spill_dir, f"run-{len(self._files):05d}.npy")
        self._files.append(path)
        np.save(path, run)
        del run
        self._disk.append(np.load(path, mmap_mode="r"))

    def _all_runs(self):
        return self._disk + self._runs  # oldest first

    def maybe_contains(self, hashes: np.ndarray) -> np.ndarray:
        """``bool[n]``: which of ``hashes`` have at least one stored entry (candidates, to be confirmed)."""
        hashes = np.asarray(hashes, dtype=np.uint64)
        hit = np.zeros(len(hashes), dtype=bool)
        for run in self._all_runs():
            h = run["h"]
            pos = np.searchsorted(h, hashes)
            ok = pos < len(h)
            hit[ok] |= h[pos[ok]] == hashes[ok]
        return hit

    def candidates(self, hash_value: int) -> list[tuple[int, int]]:
        """Every ``(source, row)`` stored under ``hash_value``, oldest run first."""
        out = []
        for run in self._all_runs():
            h = run["h"]
            lo, hi = np.searchsorted(h, np.uint64(hash_value), "left"), np.searchsorted(h, np.uint64(hash_value), "right")
            out += [(int(x["s"]), int(x["r"])) for x in run[lo:hi]]
        return out


def _merge(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Two sorted runs (``a`` older) into one, equal hashes keeping ``a``'s entries first."""
    run = np.concatenate([a, b])
    return run[np.argsort(run["h"], kind="stable")]
