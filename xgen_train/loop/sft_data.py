"""SFT shards: packed instruction-tuning rows of ``(tokens, loss_mask, segment_ids)`` (SPEC §5), and their loader.

Format ``xgen-sft-shards`` version 1: a folder with ``manifest.json`` and, per shard, three raw little-endian
C-order files of shape ``(n_rows, seq_len)``:

* ``tokens``: ``dtype`` (``uint16`` or ``uint32``) token ids;
* ``loss_mask``: ``uint8``, 1 on the tokens the loss scores (response tokens and the EOS ending each response);
* ``segment_ids``: ``uint16``, ``1..k`` for the ``k`` examples packed into the row in order, ``0`` on padding.

``manifest.json``: ``format``, ``format_version``, ``dtype``, ``eos_id``, ``vocab_size`` (optional
``padded_vocab_size``), ``seq_len``, ``n_rows`` (train) and ``validation_rows``, ``shards``: a list of
``{"split": "train"|"validation", "n_rows", "tokens": {"path", "sha256"}, "loss_mask": {...},
"segment_ids": {...}}``, and ``manifest_sha256`` (:func:`xgen_data.store.fsutil.self_checksum` of the rest);
any other keys (sources, counts, rendering) are free for the writer. Paths are relative to the folder.

Batches follow :mod:`xgen_train.loop.data` exactly: sample ``p = step * B + b`` reads row
``permute(seed, epoch)[p % n_rows]`` of epoch ``p // n_rows`` -- a fresh seeded order every epoch, a pure
function of ``(seed, step)`` so a resume sees the same batches. Every file's sha256 is checked when first
opened (or all up front with ``verify=True``; ``verify=False`` skips it).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from xgen_data.store import fsutil
from xgen_train.loop.data import SPLITS, ShardFormatError, batch_indices

__all__ = ["ARRAYS", "FORMAT", "FORMAT_VERSION", "SFTLoader", "curriculum_manifest", "is_sft_shards",
           "read_sft_manifest", "write_sft_shards"]

FORMAT = "xgen-sft-shards"
FORMAT_VERSION = 1
#: The per-row arrays of a shard and their on-disk dtypes (``tokens`` takes the manifest's ``dtype``).
ARRAYS = {"tokens": None, "loss_mask": "uint8", "segment_ids": "uint16"}
_TOKEN_DTYPES = ("uint16", "uint32")


def _require(cond: bool, where, msg: str) -> None:
    if not cond:
        raise ShardFormatError(f"{where}: {msg}")


def is_sft_shards(shards_dir: str | os.PathLike) -> bool:
    """True when ``shards_dir/manifest.json`` declares ``format: xgen-sft-shards`` (no other check)."""
    path = Path(shards_dir) / "manifest.json"
    try:
        return fsutil.read_json(str(path)).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def read_sft_manifest(shards_dir: str | os.PathLike) -> dict:
    """Read and check an SFT ``manifest.json`` (top-level fields and ``manifest_sha256``).

    Raises:
        ShardFormatError: naming the manifest: not SFT shards, bad JSON, a missing or ill-typed field, a
            checksum mismatch, or per-split row counts that disagree with ``n_rows`` / ``validation_rows``.
    """
    path = Path(shards_dir) / "manifest.json"
    _require(path.is_file(), path, "no manifest.json (not an SFT shards folder)")
    try:
        m = fsutil.read_json(str(path))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ShardFormatError(f"{path}: not valid JSON: {exc}") from None
    _require(isinstance(m, dict) and m.get("format") == FORMAT, path, f"format must be {FORMAT!r}")
    _require(m.get("format_version") == FORMAT_VERSION, path,
             f"unsupported format_version {m.get('format_version')!r}; this reader supports [{FORMAT_VERSION}]")
    _require(m.get("manifest_sha256") == fsutil.self_checksum(m, "manifest_sha256"), path,
             "manifest_sha256 does not match the manifest's content (an edited or damaged manifest)")
    _require(m.get("dtype") in _TOKEN_DTYPES, path, f"dtype must be one of {_TOKEN_DTYPES}, got {m.get('dtype')!r}")
    for key in ("eos_id", "vocab_size", "seq_len", "n_rows", "validation_rows"):
        _require(isinstance(m.get(key), int) and not isinstance(m.get(key), bool) and m[key] >= 0, path,
                 f"{key} must be a non-negative integer, got {m.get(key)!r}")
    _require(m["seq_len"] >= 2, path, "seq_len must be >= 2 for next-token training")
    _require(isinstance(m.get("shards"), list), path, "'shards' must be a list")
    for split, key in (("train", "n_rows"), ("validation", "validation_rows")):
        got = sum(int(e.get("n_rows", 0)) for e in m["shards"] if isinstance(e, dict) and e.get("split") == split)
        _require(got == m[key], path, f"{key} = {m[key]} != the sum over its {split} shards {got}")
    return m


def curriculum_manifest(manifest: dict) -> dict:
    """An SFT manifest as a one-stage curriculum (stage and sub-stage ``sft``) for
    :func:`xgen_train.loop.curriculum.make_plan`."""
    n, v = manifest["n_rows"], manifest["validation_rows"]
    return {"stages": [{"name": "sft", "substages": [{"name": "sft", "seq_len": manifest["seq_len"],
                                                     "n_sequences": n + v, "validation_sequences": v}]}]}


class SFTLoader:
    """Batches of ``(tokens, loss_mask, segment_ids)`` rows, a pure function of ``(seed, step)`` (module doc).

    Args:
        shards_dir: an ``xgen-sft-shards`` folder.
        batch_size: rows per batch (> 0).
        verify: None = each file's sha256 when first opened; True = all up front plus the token range;
            False = sizes only.
        split: ``train`` or ``validation``.
    Raises:
        ShardFormatError: naming the file: bad manifest, a missing file, a size that is not
            ``n_rows * seq_len * itemsize``, a path leaving the folder, a sha256 mismatch, no rows.
    """

    def __init__(self, shards_dir: str | os.PathLike, batch_size: int, verify: bool | None = None,
                 split: str = "train") -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.root = Path(shards_dir).resolve()
        self.manifest = m = read_sft_manifest(self.root)
        self.batch_size, self.split, self.seq_len = int(batch_size), split, int(m["seq_len"])
        self.eos_id, self.vocab_size = int(m["eos_id"]), int(m["vocab_size"])
        self.padded_vocab_size = int(m.get("padded_vocab_size", self.vocab_size))
        self.dtypes = {k: (m["dtype"] if d is None else d) for k, d in ARRAYS.items()}
        self.files: list[dict[str, tuple[Path, str]]] = []
        starts, offset = [], 0
        for i, entry in enumerate(m["shards"]):
            if not isinstance(entry, dict) or entry.get("split") != split or not entry.get("n_rows"):
                continue
            self.files.append({k: self._check_file(entry, k, i, verify) for k in ARRAYS})
            starts.append(offset)
            offset += int(entry["n_rows"])
        _require(offset > 0, self.root / "manifest.json", f"no {split} rows")
        self.n_sequences = offset
        self._starts = np.asarray(starts, dtype=np.int64)
        self._counts = [int(e["n_rows"]) for e in m["shards"]
                        if isinstance(e, dict) and e.get("split") == split and e.get("n_rows")]
        self._maps: dict[tuple[int, str], np.memmap] = {}
        self._verify_on_open = verify is None
        if verify:
            for k in range(len(self.files)):
                top = int(self._map(k, "tokens").max())
                _require(top < self.vocab_size, self.files[k]["tokens"][0], f"token id {top} >= vocab_size "
                                                                            f"{self.vocab_size}")

    def _check_file(self, entry: dict, key: str, i: int, verify: bool | None) -> tuple[Path, str]:
        spec = entry.get(key)
        mpath = self.root / "manifest.json"
        _require(isinstance(spec, dict) and isinstance(spec.get("path"), str), mpath, f"shards[{i}]: no {key} path")
        path = (self.root / spec["path"]).resolve()
        _require(path.is_relative_to(self.root), path, f"shards[{i}] {key} path leaves the shards folder")
        _require(path.is_file(), path, "file listed in manifest.json is missing")
        want = int(entry["n_rows"]) * self.seq_len * np.dtype(self.dtypes[key]).itemsize
        _require(path.stat().st_size == want, path, f"size {path.stat().st_size} bytes != n_rows*seq_len*itemsize "
                                                    f"= {want} bytes")
        sha = spec.get("sha256")
        if verify is not False:
            _require(isinstance(sha, str), path, "no sha256 in the manifest to verify the file against")
        if verify:
            self._check_sha256(path, sha)
        return path, sha

    @staticmethod
    def _check_sha256(path: Path, sha: str) -> None:
        got = fsutil.sha256_file(str(path))
        _require(got == sha.lower(), path, f"sha256 mismatch: manifest {sha}, file {got} (a damaged or changed shard)")

    def _map(self, k: int, key: str) -> np.memmap:
        if (k, key) not in self._maps:
            path, sha = self.files[k][key]
            if self._verify_on_open:
                self._check_sha256(path, sha)
            self._maps[(k, key)] = np.memmap(path, dtype=np.dtype(self.dtypes[key]).newbyteorder("<"), mode="r",
                                             shape=(self._counts[k], self.seq_len))
        return self._maps[(k, key)]

    def rows(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Rows by global index: ``{tokens, loss_mask, segment_ids}``, each int32 ``[len(indices), seq_len]``.

        Raises IndexError outside ``[0, n_sequences)``; ShardFormatError (naming the file) for a token id
        ``>= vocab_size``.
        """
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_sequences):
            raise IndexError(f"row index out of range [0, {self.n_sequences})")
        out = {key: np.empty((idx.size, self.seq_len), dtype=np.int32) for key in ARRAYS}
        shard = np.searchsorted(self._starts, idx, side="right") - 1
        for k in np.unique(shard):
            sel = np.nonzero(shard == k)[0]
            for key in ARRAYS:
                out[key][sel] = self._map(int(k), key)[idx[sel] - self._starts[k]]
            top = int(out["tokens"][sel].max()) if sel.size else 0
            _require(top < self.vocab_size, self.files[int(k)]["tokens"][0],
                     f"token id {top} >= vocab_size {self.vocab_size} (corrupt or foreign shard)")
        return out

    def batch_indices(self, seed: int, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Global row indices and epochs of batch ``step``: two int64 ``[B]`` arrays (a fresh order per epoch)."""
        return batch_indices(seed, step, self.batch_size, self.n_sequences)

    def batch_at(self, seed: int, step: int) -> dict[str, np.ndarray]:
        """Batch ``step`` for ``seed``: :meth:`rows` of :meth:`batch_indices` plus ``indices`` and ``epochs``."""
        indices, epochs = self.batch_indices(seed, step)
        return {**self.rows(indices), "indices": indices, "epochs": epochs}


def write_sft_shards(out_dir: str | os.PathLike, splits: dict[str, dict[str, np.ndarray]], *, eos_id: int,
                     vocab_size: int, dtype: str = "uint16", rows_per_shard: int = 1 << 16,
                     extra: dict | None = None) -> dict:
    """Write an ``xgen-sft-shards`` folder (module doc); the reference writer of the format.

    Args:
        out_dir: target folder (created); files are written atomically, ``manifest.json`` last, so a
            reader sees the old manifest or the complete new one.
        splits: ``{"train": arrays, "validation": arrays}`` (validation optional), ``arrays`` =
            ``{tokens, loss_mask, segment_ids}`` of shape ``[n, seq_len]``.
        eos_id, vocab_size, dtype: manifest fields (``dtype`` of the token file).
        rows_per_shard: rows per shard file.
        extra: more manifest keys (sources, counts, rendering).
    Returns:
        the manifest. Raises ValueError for mismatched shapes or values that do not fit their dtypes.
    """
    if dtype not in _TOKEN_DTYPES:
        raise ValueError(f"dtype must be one of {_TOKEN_DTYPES}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dtypes = {k: (dtype if d is None else d) for k, d in ARRAYS.items()}
    shards, seq_len, counts = [], None, {}
    for split, arrays in splits.items():
        shapes = {np.asarray(arrays[k]).shape for k in ARRAYS}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2:
            raise ValueError(f"{split}: tokens, loss_mask and segment_ids need one 2-D shape, got {shapes}")
        n, seq_len = next(iter(shapes))
        counts[split] = n
        for start in range(0, n, rows_per_shard):
            entry = {"split": split, "n_rows": min(rows_per_shard, n - start)}
            for key in ARRAYS:
                a = np.asarray(arrays[key])[start:start + rows_per_shard]
                info = np.iinfo(dtypes[key])
                if a.size and (a.min() < info.min or a.max() > info.max):
                    raise ValueError(f"{split} {key}: values do not fit {dtypes[key]}")
                rel = f"{split}-{start // rows_per_shard:05d}.{key}.bin"
                data = a.astype(np.dtype(dtypes[key]).newbyteorder("<")).tobytes()
                with fsutil.atomic_path(str(out / rel)) as tmp:
                    Path(tmp).write_bytes(data)
                entry[key] = {"path": rel, "sha256": fsutil.sha256_file(str(out / rel))}
            shards.append(entry)
    manifest = {**(extra or {}), "format": FORMAT, "format_version": FORMAT_VERSION, "dtype": dtype,
                "eos_id": int(eos_id), "vocab_size": int(vocab_size), "seq_len": int(seq_len),
                "n_rows": counts.get("train", 0), "validation_rows": counts.get("validation", 0), "shards": shards}
    manifest["manifest_sha256"] = fsutil.self_checksum(manifest, "manifest_sha256")
    fsutil.write_json(str(out / "manifest.json"), manifest)
    return manifest
