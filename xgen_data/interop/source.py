"""Reading a shards folder for export: checked once up front, then streamed in row blocks per dataset.

A *dataset* of an export is one (stage, sub-stage, split) of the shards folder: the rows of its shard files
in manifest order. Readers of every target format see those rows in that order, token for token.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Iterator

import numpy as np

from xgen_data.errors import DamagedDataError
from xgen_data.shards import shard_format

#: Bytes per block of rows read from a shard (memory holds one block at a time).
BLOCK_BYTES = 4 << 20


@dataclasses.dataclass(frozen=True)
class Dataset:
    """One exported dataset: the shard entries of one (stage, sub-stage, split), in manifest order."""

    stage: str
    substage: str
    split: str  # "train" or "validation"
    seq_len: int
    entries: tuple[dict, ...]

    @property
    def name(self) -> str:
        """Relative path of the dataset inside an export: ``<stage>/<substage>/<split>``."""
        return f"{self.stage}/{self.substage}/{self.split}"

    @property
    def n_sequences(self) -> int:
        return sum(int(e["n_sequences"]) for e in self.entries)

    @property
    def n_tokens(self) -> int:
        return self.n_sequences * self.seq_len

    def tokens_per_subset(self) -> dict[str, int]:
        """Content tokens per subset (EOS excluded), summed over the dataset's shards (the manifest's counts)."""
        out: dict[str, int] = {}
        for e in self.entries:
            for k, v in e.get("tokens_per_subset", {}).items():
                out[k] = out.get(k, 0) + int(v)
        return dict(sorted(out.items()))


def check_shards(shard_dir: str) -> dict:
    """Read the manifest and verify every shard and index file against it; return the manifest.

    Raises:
        DamagedDataError: naming the first damaged file (sha256 or size differs from the manifest), so that
            nothing is exported from a damaged shards folder.
        ShardError: the manifest itself is missing or damaged (:func:`shard_format.read_manifest`).
    """
    manifest = shard_format.read_manifest(shard_dir)
    problems = shard_format.verify(shard_dir)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise DamagedDataError(f"{shard_dir}: {problems[0]}{more}; nothing was exported (rebuild the shards "
                               "with `xgen mix build`, or check them with `xgen verify`)")
    return manifest


def datasets(manifest: dict) -> list[Dataset]:
    """The datasets of a shards manifest: per stage and sub-stage (manifest order), train then validation."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for e in manifest["shards"]:
        key = (e["stage"], e["substage"], e["split"])
        groups.setdefault(key, []).append(e)
    order = [(st["name"], sub["name"]) for st in manifest["stages"] for sub in st["substages"]]
    out = []
    for stage, substage in order:
        for split in ("train", "validation"):
            entries = groups.get((stage, substage, split))
            if entries:
                out.append(Dataset(stage, substage, split, int(entries[0]["seq_len"]), tuple(entries)))
    return out


def row_blocks(shard_dir: str, ds: Dataset, block_bytes: int = BLOCK_BYTES) -> Iterator[np.ndarray]:
    """Yield the dataset's rows as uint16 ``[rows, seq_len]`` blocks of at most ``block_bytes``.

    Blocks are read with plain file reads, not a memory map, so the process holds one block at a time
    (a map's touched pages would count in its resident memory up to the file's size).
    """
    rows_per_block = max(1, block_bytes // (2 * ds.seq_len))
    for e in ds.entries:
        shard_format.open_shard(shard_dir, e)  # checks the file's size against the manifest
        with open(os.path.join(shard_dir, e["path"]), "rb") as f:
            left = int(e["n_sequences"])
            while left:
                n = min(rows_per_block, left)
                block = np.fromfile(f, dtype=shard_format.DTYPE, count=n * ds.seq_len)
                if block.size != n * ds.seq_len:
                    raise DamagedDataError(f"{os.path.join(shard_dir, e['path'])}: shorter than its manifest says")
                yield block.reshape(n, ds.seq_len)
                left -= n


class RowStream:
    """The rows of a dataset handed out in runs of any length (for files that hold a fixed number of rows)."""

    def __init__(self, shard_dir: str, ds: Dataset, block_bytes: int = BLOCK_BYTES) -> None:
        self._blocks = row_blocks(shard_dir, ds, block_bytes)
        self._pending = np.zeros((0, ds.seq_len), dtype=shard_format.DTYPE)

    def take(self, n: int) -> Iterator[np.ndarray]:
        """Yield the next ``n`` rows as contiguous uint16 ``[rows, seq_len]`` pieces, in order."""
        while n:
            if not len(self._pending):
                self._pending = next(self._blocks)
            piece = self._pending[:n]
            self._pending, n = self._pending[len(piece):], n - len(piece)
            yield np.ascontiguousarray(piece)
