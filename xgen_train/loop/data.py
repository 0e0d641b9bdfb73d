"""Deterministic batches from an ``xgen-shards`` directory (written by ``xgen mix build``).

Format (read-only here): ``manifest.json`` plus raw shard files. Each ``.bin`` is little-endian
``uint16``, C order, shape ``(n_sequences, seq_len)``; token ``eos_id`` (50256) separates documents
(SPEC §2). A sub-stage (e.g. ``stage1``/``s2k``) may span several shard files; its *global sequence
index* is the concatenation of its shards in manifest order.

Batch semantics (SPEC §4 "stage boundaries carry state over; only data and sequence length change"):

* Sample number ``p = step * batch_size + b`` (``b`` = row in the batch) belongs to epoch
  ``p // n_sequences`` and reads global sequence ``perm(seed, epoch)[p % n_sequences]``.
* ``perm(seed, epoch)`` is a seeded pseudo-random permutation of ``range(n_sequences)``, a fresh one
  per epoch, computed element-wise by a keyed 6-round Feistel network with cycle walking. It needs
  O(1) memory (a materialised permutation of a 800B-token sub-stage at 2,048 tokens would be 3 GB)
  and is a pure function of ``(seed, epoch, position)``.
* Hence :meth:`ShardLoader.batch_at` is a pure function of ``(seed, step)``: resuming at step ``s``
  reproduces exactly the batches an uninterrupted run would have seen, whatever came before.
* Shards are memory-mapped (``np.memmap``); a batch copies only its ``batch_size`` rows.
* Next-token shift: the trainer feeds the full ``tokens [B, L]`` to the model and scores
  ``logits[:, :-1]`` against ``tokens[:, 1:]`` (``L - 1`` predictions per row; EOS is an ordinary
  target). ``inputs``/``targets`` in the batch are those two views, for callers that want them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xgen_data.shards import shard_format as shards
from xgen_data.shards.shard_format import FORMAT
from xgen_data.shards.shard_format import ShardError as ShardFormatError
from xgen_data.shards.shard_format import read_manifest as load_manifest
from xgen_data.store import fsutil

__all__ = [
    "FORMAT", "SPLITS", "SUPPORTED_FORMAT_VERSIONS", "ShardFile", "ShardFormatError", "ShardLoader",
    "load_manifest", "permute",
]

SUPPORTED_FORMAT_VERSIONS = (shards.FORMAT_VERSION,)
SPLITS = ("train", "validation")
_FEISTEL_ROUNDS = 6
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


@dataclass(frozen=True)
class ShardFile:
    """One ``.bin`` file of the selected sub-stage: absolute path, shape, first global index."""

    path: Path
    n_sequences: int
    seq_len: int
    offset: int
    sha256: str | None


# --------------------------------------------------------------------------------------------------
# Seeded permutation


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def _round_keys(seed: int, epoch: int) -> np.ndarray:
    rng = np.random.default_rng([int(seed), int(epoch)])
    return rng.integers(0, 2**64, size=_FEISTEL_ROUNDS, dtype=np.uint64, endpoint=False)


def permute(seed: int, epoch: int, positions: np.ndarray, n: int) -> np.ndarray:
    """Image of ``positions`` under the seeded permutation of ``range(n)`` for ``(seed, epoch)``.

    Args:
        seed, epoch: non-negative ints; each pair gives an independent permutation.
        positions: int array, values in ``[0, n)``.
        n: permutation size (> 0).
    Returns:
        int64 array of the same shape; ``permute(s, e, np.arange(n), n)`` is a permutation of ``range(n)``.
    Raises:
        ValueError: ``n <= 0``, negative seed/epoch, or positions out of range.
    """
    if n <= 0:
        raise ValueError(f"permutation size must be > 0, got {n}")
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be >= 0, got seed={seed} epoch={epoch}")
    pos = np.asarray(positions, dtype=np.int64)
    if pos.size and (pos.min() < 0 or pos.max() >= n):
        raise ValueError(f"positions must be in [0, {n})")
    if n == 1:
        return np.zeros_like(pos)
    bits = max(2, int(n - 1).bit_length())
    bits += bits % 2  # balanced halves
    half = np.uint64(bits // 2)
    mask = np.uint64((1 << (bits // 2)) - 1)
    keys = _round_keys(seed, epoch)

    def encrypt(x: np.ndarray) -> np.ndarray:
        left, right = x >> half, x & mask
        for key in keys:
            left, right = right, left ^ (_mix64(right ^ key) & mask)
        return (left << half) | right

    out = encrypt(pos.astype(np.uint64).ravel())
    bad = out >= np.uint64(n)
    while bad.any():  # cycle walking: a permutation of [0, 2^bits) restricted to [0, n)
        out[bad] = encrypt(out[bad])
        bad = out >= np.uint64(n)
    return out.astype(np.int64).reshape(pos.shape)


def batch_indices(seed: int, step: int, batch_size: int, n_sequences: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices and epochs of batch ``step`` over ``n_sequences`` rows: two int64 ``[batch_size]`` arrays.

    Sample ``step * batch_size + i`` is row ``permute(seed, epoch, within, n_sequences)`` of epoch
    ``sample // n_sequences``: every epoch visits each row once, in its own seeded order.

    Raises:
        ValueError: ``step < 0``.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    samples = step * batch_size + np.arange(batch_size, dtype=np.int64)
    epochs, within = samples // n_sequences, samples % n_sequences
    indices = np.empty_like(samples)
    for e in np.unique(epochs):
        sel = epochs == e
        indices[sel] = permute(seed, int(e), within[sel], n_sequences)
    return indices, epochs


# --------------------------------------------------------------------------------------------------
# Manifest


def _require(cond: bool, where: Path, msg: str) -> None:
    if not cond:
        raise ShardFormatError(f"{where}: {msg}")


def _int_field(entry: dict, key: str, where: Path, ctx: str) -> int:
    return shards.int_field(entry, key, str(where), ctx)


def _pick(names: list[str], wanted: str | None, what: str, where: Path) -> str:
    if wanted is None:
        _require(len(names) == 1, where,
                 f"{len(names)} {what}s ({', '.join(names)}); choose one with --{what}")
        return names[0]
    _require(wanted in names, where, f"no {what} {wanted!r}; available: {', '.join(names)}")
    return wanted


# --------------------------------------------------------------------------------------------------
# Loader


class ShardLoader:
    """Batches of one sub-stage of an ``xgen-shards`` directory, as a pure function of ``(seed, step)``.

    Args:
        shards_dir: folder holding ``manifest.json``.
        batch_size: sequences per batch (> 0).
        stage, substage: which sub-stage to read; may be omitted when there is only one choice.
        verify: ``None`` (default): each shard's ``sha256`` is checked the first time the loader opens it
            (lazily, once per file), so a corrupted byte never reaches a batch unnoticed; ``True``: check
            every shard's ``sha256`` and that every token id is ``< vocab_size`` up front (reads every
            file once); ``False``: no sha256 check (sizes only; ``xgen train --no-verify``).
        split: ``"train"`` (default) or ``"validation"``: the manifest entries whose ``split`` matches
            (an entry without ``split`` is train), see :func:`xgen_data.shards.pack_step.shard_ranges`.
    Raises:
        ShardFormatError: bad manifest, unknown/ambiguous stage or sub-stage, no shards, a shard whose
            ``seq_len`` differs from its sub-stage, a missing file, a file size different from
            ``n_sequences * seq_len * 2`` bytes, shard totals that disagree with the sub-stage entry,
            a path outside the directory, a sha256 mismatch (when the file is first opened, or up front
            with ``verify=True``) or an out-of-range token. Messages name the file.
    """

    def __init__(self, shards_dir: str | os.PathLike, batch_size: int, stage: str | None = None,
                 substage: str | None = None, verify: bool | None = None, split: str = "train") -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.split = split
        self.root = Path(shards_dir).resolve()
        self.manifest = load_manifest(self.root)
        mpath = self.root / "manifest.json"
        self.batch_size = int(batch_size)
        self.eos_id: int = self.manifest["eos_id"]
        self.vocab_size: int = self.manifest["vocab_size"]
        self.padded_vocab_size: int = self.manifest.get("padded_vocab_size", self.vocab_size)

        stages = {s.get("name"): s for s in self.manifest["stages"] if isinstance(s, dict)}
        self.stage = _pick(list(stages), stage, "stage", mpath)
        subs = {s.get("name"): s for s in stages[self.stage].get("substages") or [] if isinstance(s, dict)}
        _require(bool(subs), mpath, f"stage {self.stage!r} has no substages")
        self.substage = _pick(list(subs), substage, "substage", mpath)
        sub = subs[self.substage]
        ctx = f"stage {self.stage!r} substage {self.substage!r}"
        self.seq_len: int = _int_field(sub, "seq_len", mpath, ctx)
        _require(self.seq_len >= 2, mpath, f"{ctx}: seq_len must be >= 2 for next-token training")

        files: list[ShardFile] = []
        offset = 0
        for i, entry in enumerate(self.manifest["shards"]):
            _require(isinstance(entry, dict), mpath, f"shards[{i}] is not an object")
            if entry.get("stage") != self.stage or entry.get("substage") != self.substage:
                continue
            if entry["split"] != split:
                continue
            rel = entry.get("path")
            _require(isinstance(rel, str) and rel, mpath, f"shards[{i}]: missing 'path'")
            path = (self.root / rel).resolve()
            _require(path.is_relative_to(self.root), path, f"shards[{i}] path {rel!r} leaves the shards directory")
            n = _int_field(entry, "n_sequences", path, f"manifest shards[{i}]")
            seq_len = _int_field(entry, "seq_len", path, f"manifest shards[{i}]")
            _require(seq_len == self.seq_len, path, f"seq_len {seq_len} differs from {ctx} seq_len {self.seq_len}")
            _require(path.is_file(), path, "shard file listed in manifest.json is missing")
            expected = n * seq_len * 2
            actual = path.stat().st_size
            _require(actual == expected, path,
                     f"size {actual} bytes != n_sequences*seq_len*2 = {n}*{seq_len}*2 = {expected} bytes")
            sha = entry.get("sha256")
            if verify is not False:
                _require(isinstance(sha, str), path, "the manifest entry has no sha256 to verify the shard "
                                                     "against (--no-verify / verify=False skips the check)")
            if verify:
                self._check_sha256(path, sha)
            if n:
                files.append(ShardFile(path, n, seq_len, offset, sha))
                offset += n
        _require(bool(files), mpath, f"{ctx}: no {split} shard files with sequences")
        n_val = _int_field(sub, "validation_sequences", mpath, ctx) if "validation_sequences" in sub else 0
        if "n_sequences" in sub:
            total = _int_field(sub, "n_sequences", mpath, ctx)
            declared = total - n_val if split == "train" else n_val
            what = "n_sequences - validation_sequences" if split == "train" else "validation_sequences"
            _require(declared == offset, mpath, f"{ctx}: {what} = {declared} != sum over its {split} shards {offset}")
        self.files = files
        self.n_sequences = offset
        self._starts = np.array([f.offset for f in files], dtype=np.int64)
        self._maps: list[np.memmap | None] = [None] * len(files)
        self._verify_on_open = verify is None  # verify=True checked every file above
        if verify:
            for k, f in enumerate(files):
                top = int(self._map(k).max())
                _require(top < self.vocab_size, f.path, f"token id {top} >= vocab_size {self.vocab_size}")

    # ------------------------------------------------------------------------------------------
    @staticmethod
    def _check_sha256(path: Path, sha: str) -> None:
        got = fsutil.sha256_file(str(path))
        _require(got == sha.lower(), path, f"sha256 mismatch: manifest {sha}, file {got} (a damaged or changed "
                                           "shard: rebuild it with `xgen mix build`)")

    def _map(self, k: int) -> np.memmap:
        mm = self._maps[k]
        if mm is None:
            f = self.files[k]
            if self._verify_on_open:  # once per file, before any of its rows is read
                self._check_sha256(f.path, f.sha256)
            mm = np.memmap(f.path, dtype="<u2", mode="r", shape=(f.n_sequences, f.seq_len))
            self._maps[k] = mm
        return mm

    def epoch_of(self, step: int) -> float:
        """Fractional epoch at the start of ``step``: ``step * batch_size / n_sequences``."""
        return step * self.batch_size / self.n_sequences

    def sequences(self, indices: np.ndarray) -> np.ndarray:
        """Rows of the sub-stage by global index: uint16 ``[len(indices), seq_len]`` (a copy).

        Raises ``IndexError`` for indices outside ``[0, n_sequences)``; ``ShardFormatError`` (naming the
        shard) when a row holds a token id ``>= vocab_size``.
        """
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_sequences):
            raise IndexError(f"sequence index out of range [0, {self.n_sequences})")
        out = np.empty((idx.size, self.seq_len), dtype=np.uint16)
        shard = np.searchsorted(self._starts, idx, side="right") - 1
        for k in np.unique(shard):
            sel = np.nonzero(shard == k)[0]
            out[sel] = self._map(int(k))[idx[sel] - self._starts[k]]
            top = int(out[sel].max()) if sel.size else 0
            # cheap per batch; an id past the vocabulary would be silently clamped by the embedding lookup
            _require(top < self.vocab_size, self.files[int(k)].path,
                     f"token id {top} >= vocab_size {self.vocab_size} (corrupt or foreign shard)")
        return out

    def batch_indices(self, seed: int, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Global sequence indices and epochs of the rows of batch ``step``: two int64 ``[B]`` arrays."""
        return batch_indices(seed, step, self.batch_size, self.n_sequences)

    def batch_at(self, seed: int, step: int) -> dict[str, np.ndarray]:
        """Batch number ``step`` for data seed ``seed`` (pure function of both).

        Returns a dict:
            ``tokens``: int32 ``[B, L]``; ``inputs`` = ``tokens[:, :-1]`` and ``targets`` =
            ``tokens[:, 1:]`` (int32 ``[B, L-1]`` views); ``indices``: int64 ``[B]`` global sequence
            indices; ``epochs``: int64 ``[B]`` epoch of each row.
        """
        indices, epochs = self.batch_indices(seed, step)
        tokens = self.sequences(indices).astype(np.int32)
        return {"tokens": tokens, "inputs": tokens[:, :-1], "targets": tokens[:, 1:],
                "indices": indices, "epochs": epochs}

    def describe(self) -> dict:
        """JSON-able summary of the selection (stored in checkpoints and metrics)."""
        return {"shards_dir": str(self.root), "stage": self.stage, "substage": self.substage,
                "seq_len": self.seq_len, "n_sequences": self.n_sequences, "batch_size": self.batch_size,
                "n_files": len(self.files), "split": self.split, "recipe": self.manifest.get("recipe"),
                "manifest_seed": self.manifest.get("seed")}
