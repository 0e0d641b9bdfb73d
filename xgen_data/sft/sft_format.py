"""The SFT shard format: packed instruction-tuning rows (tokens, loss mask, segment ids), memory-mapped.

An SFT shards folder (``format`` ``"xgen-sft-shards"``, ``format_version`` 1; the trainer's reader is
:mod:`xgen_train.loop.sft_data`)::

    manifest.json
    train-00000.tokens.bin        little-endian uint16, C order, [n_rows, seq_len]: token ids, 0 on padding
    train-00000.loss_mask.bin     uint8, [n_rows, seq_len]: 1 where the token is a training target
    train-00000.segment_ids.bin   little-endian uint16, [n_rows, seq_len]: 1, 2, … per example in the row, 0 = padding
    train-00000.idx.parquet       one row per packed example (:data:`INDEX_SCHEMA`)
    validation-00000.*            the held-out rows (``--validation-rows``), same layout
    decontamination.parquet       one row per removed example (:data:`REMOVED_SCHEMA`), always present

Row semantics (what the trainer must honour, SPEC §5):

* Each row holds whole examples one after another (an example never crosses a row), then padding.
  ``segment_ids`` numbers the examples of the row from 1; padding has segment 0, token 0 and mask 0.
* Positions restart at 0 at the first token of every example (:func:`positions`); attention is allowed only
  inside a segment (a token attends to earlier tokens of its own example).
* ``loss_mask[t] == 1`` says token ``t`` is a target: it is a response token or the ``<EOS>`` (50256) ending
  a response. It is 0 on the system header, the ``### Human:`` / ``### Assistant:`` tags, prompts, the ``\\n``
  between turns and padding. Labels are shifted per example: the input at position ``t`` predicts token
  ``t + 1`` only when both lie in the same segment (:func:`shifted_targets`), so examples never predict each
  other; the first token of an example is never a target.

``manifest.json`` holds ``format``, ``format_version``, ``dtype`` ("uint16", the token files'), ``eos_id``,
``vocab_size``, ``padded_vocab_size``, ``seq_len``, ``n_rows`` (train rows) and ``validation_rows``, ``shards``
(per shard: ``split`` ("train" or "validation"), ``n_rows``, ``seq_len``, ``n_examples`` and, for each of
``tokens``, ``loss_mask``, ``segment_ids`` and ``index``, ``{"path", "sha256"}``), ``removed_file``
(``{"path", "sha256"}`` of ``decontamination.parquet``), and what it was made from: ``seed``, ``overlong``,
``rendering`` (the format string, system header on/off, the EOS id, the generation stop strings),
``sources`` (per input file: path, sha256, records, examples, per-shape counts, skipped errors), ``shapes``
(per-shape example counts), ``counts`` (records, examples, packed, dropped/truncated overlong, skipped, removed
by decontamination, rows, tokens, loss tokens, padding tokens), ``padding_share`` (padding tokens / row
tokens), ``decontamination`` (eval sets with path, sha256, benchmark and items; removals per benchmark; the
removed examples with the matching n-gram or substring and eval item id), and ``manifest_sha256``: the
manifest's own checksum, computed exactly as for pre-training shards
(:func:`xgen_data.shards.shard_format.manifest_sha256`). Paths are relative to the folder.
"""
from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from xgen_data.errors import DamagedDataError, InputError
from xgen_data.shards import shard_format
from xgen_data.store import fsutil, publish

FORMAT = "xgen-sft-shards"
FORMAT_VERSION = 1
TOKEN_DTYPE = np.dtype("<u2")
MASK_DTYPE = np.dtype("u1")
SEGMENT_DTYPE = np.dtype("<u2")
ARRAYS = {"tokens": TOKEN_DTYPE, "loss_mask": MASK_DTYPE, "segment_ids": SEGMENT_DTYPE}

INDEX_SCHEMA = pa.schema([
    ("row", pa.int64()),  # row in this shard
    ("segment", pa.int32()),  # segment id of the example in its row (1-based)
    ("start", pa.int32()),  # first token of the example in the row
    ("length", pa.int32()),  # tokens of the example (after truncation)
    ("loss_tokens", pa.int32()),  # tokens with loss_mask 1
    ("truncated", pa.bool_()),
    ("example_id", pa.string()),  # record id (or file:line), plus "/path-k" for a tree's k-th path
    ("source", pa.string()),  # input file (as given) or the record's source field
    ("shape", pa.string()),  # the recognised record shape (xgen_data.sft.shapes)
])

REMOVED_SCHEMA = pa.schema([
    ("example_id", pa.string()),
    ("source", pa.string()),
    ("benchmark", pa.string()),
    ("eval_item_id", pa.string()),
    ("match_kind", pa.string()),  # "ngram13" or "code_substring"
    ("match", pa.string()),  # the normalised 13-gram or substring that matched
])


SPLITS = ("train", "validation")
FILES = tuple(ARRAYS) + ("index",)  # the files of one shard, each ``{"path", "sha256"}`` in its entry
REMOVED_FILE = "decontamination.parquet"


def file_path(split: str, shard: int, name: str) -> str:
    """Relative path of file ``name`` (``tokens``, ``loss_mask``, ``segment_ids`` or ``index``) of a shard."""
    return f"{split}-{shard:05d}.{'idx.parquet' if name == 'index' else name + '.bin'}"


def is_sft_shards(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a ``manifest.json`` whose ``format`` is ``xgen-sft-shards`` (no checksum check)."""
    path = os.path.join(os.fspath(folder), "manifest.json")
    if not os.path.isfile(path):
        return False
    try:
        return fsutil.read_json(path).get("format") == FORMAT
    except (ValueError, UnicodeDecodeError, AttributeError):
        return False


def read_manifest(folder: str | os.PathLike) -> dict:
    """Read and check ``<folder>/manifest.json`` of SFT shards: format, version, self-checksum, fields.

    Raises:
        DamagedDataError: naming the manifest, when its content does not match ``manifest_sha256`` or the
            field is missing.
        InputError: naming the folder or manifest, for a missing folder or file, bad JSON, another format
            (e.g. pre-training shards) or a bad field.
    """
    folder = os.fspath(folder)
    path = os.path.join(folder, "manifest.json")
    if not os.path.exists(folder) and os.path.isdir(publish.backup_dir(folder)):
        raise InputError(f"{folder}: missing: an `xgen sft prepare` into it was interrupted; the previous shards "
                         f"are in {publish.backup_dir(folder)} and the next prepare restores them first")
    if not os.path.isfile(path):
        raise InputError(f"{folder}: no manifest.json (not an SFT shards folder; run `xgen sft prepare`)")
    try:
        manifest = fsutil.read_json(path)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(str(exc)) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else None
        raise InputError(f"{path}: format must be {FORMAT!r}, got {got!r}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{path}: unsupported format_version {manifest.get('format_version')!r}; this reader "
                         f"supports [{FORMAT_VERSION}]")
    want = manifest.get(shard_format.MANIFEST_SHA256)
    if want is None:
        raise DamagedDataError(f"{path}: no {shard_format.MANIFEST_SHA256} (the manifest's own checksum; edited, "
                               "damaged or written by an older xgen): rerun `xgen sft prepare`")
    if not isinstance(want, str) or want != shard_format.manifest_sha256(manifest):
        raise DamagedDataError(f"{path}: content does not match its {shard_format.MANIFEST_SHA256} (the manifest "
                               "was edited or damaged; rerun `xgen sft prepare`)")
    for key in ("seq_len", "eos_id", "vocab_size", "n_rows", "validation_rows"):
        shard_format.int_field(manifest, key, path, "manifest")
    if manifest.get("dtype") != "uint16" or not isinstance(manifest.get("shards"), list):
        raise InputError(f"{path}: 'dtype' must be 'uint16' and 'shards' a list")
    for split, key in (("train", "n_rows"), ("validation", "validation_rows")):
        got = sum(int(e.get("n_rows", 0)) for e in manifest["shards"] if e.get("split") == split)
        if got != manifest[key]:
            raise DamagedDataError(f"{path}: {key} = {manifest[key]} but its {split} shards hold {got} rows")
    return manifest


def write_manifest(folder: str, manifest: dict) -> dict:
    """Stamp ``manifest`` with ``format``, ``format_version`` and ``manifest_sha256``; write it atomically."""
    body = {"format": FORMAT, "format_version": FORMAT_VERSION, **manifest}
    return shard_format.write_manifest(folder, body)


def open_rows(folder: str | os.PathLike, entry: dict) -> dict[str, np.ndarray]:
    """Memory-map one shard's three arrays, each read-only of shape ``[n_rows, seq_len]``.

    Returns:
        ``{"tokens": uint16, "loss_mask": uint8, "segment_ids": uint16}``.

    Raises:
        DamagedDataError: a file is missing or its size is not ``n_rows × seq_len × itemsize`` bytes.
    """
    folder = os.fspath(folder)
    shape = (int(entry["n_rows"]), int(entry["seq_len"]))
    out = {}
    for name, dtype in ARRAYS.items():
        path = os.path.join(folder, entry[name]["path"])
        if not os.path.isfile(path):
            raise DamagedDataError(f"{path}: file listed in manifest.json is missing")
        want = shape[0] * shape[1] * dtype.itemsize
        if os.path.getsize(path) != want:
            raise DamagedDataError(f"{path}: {os.path.getsize(path)} bytes, manifest says {shape} {dtype} = {want}")
        out[name] = np.memmap(path, dtype=dtype, mode="r", shape=shape)
    return out


def _shard_files(entry: dict) -> list[tuple[str, str]]:
    return [(entry[n]["path"], entry[n]["sha256"]) for n in FILES]


def verify(folder: str | os.PathLike) -> list[str]:
    """Check the manifest's own checksum, then every listed file (each shard's three arrays and index, and
    ``decontamination.parquet``) one by one: present, of the recorded size (arrays), of the recorded SHA-256.
    Returns one problem per damaged or missing file (empty when all match); a manifest that does not match
    its checksum is the one problem returned (its file list cannot be trusted).

    Raises:
        InputError: the folder cannot be read as SFT shards at all (no manifest, bad JSON, another format).
    """
    folder = os.fspath(folder)
    try:
        manifest = read_manifest(folder)
    except DamagedDataError as exc:
        return [str(exc)]
    sizes = {}  # the byte size each array file must have: n_rows × seq_len × itemsize
    for e in manifest["shards"]:
        sizes.update({e[name]["path"]: int(e["n_rows"]) * int(e["seq_len"]) * dtype.itemsize
                      for name, dtype in ARRAYS.items()})
    files = [(manifest["removed_file"]["path"], manifest["removed_file"]["sha256"])]
    files += [f for entry in manifest["shards"] for f in _shard_files(entry)]
    problems = []
    for rel, want in files:
        path = os.path.join(folder, rel)
        if not os.path.isfile(path):
            problems.append(f"{path}: file listed in manifest.json is missing")
        elif rel in sizes and os.path.getsize(path) != sizes[rel]:
            problems.append(f"{path}: {os.path.getsize(path)} bytes, manifest.json says {sizes[rel]}")
        elif (got := fsutil.sha256_file(path)) != want:
            problems.append(f"{path}: sha256 {got[:12]}… does not match manifest {want[:12]}…")
    return problems


def read_index(folder: str | os.PathLike, entry: dict) -> pa.Table:
    """The per-example index of one shard (:data:`INDEX_SCHEMA`), checked against its recorded sha256.

    Raises:
        DamagedDataError: the index file is missing or its SHA-256 differs from the manifest's.
    """
    path = os.path.join(os.fspath(folder), entry["index"]["path"])
    if not os.path.isfile(path) or fsutil.sha256_file(path) != entry["index"]["sha256"]:
        raise DamagedDataError(f"{path}: missing or its sha256 does not match manifest.json")
    return pq.read_table(path)


def read_removed(folder: str | os.PathLike) -> pa.Table:
    """The examples decontamination removed (:data:`REMOVED_SCHEMA`), checked against its recorded sha256."""
    manifest = read_manifest(folder)
    path = os.path.join(os.fspath(folder), manifest["removed_file"]["path"])
    if not os.path.isfile(path) or fsutil.sha256_file(path) != manifest["removed_file"]["sha256"]:
        raise DamagedDataError(f"{path}: missing or its sha256 does not match manifest.json")
    return pq.read_table(path)


def read_all(folder: str | os.PathLike, split: str | None = None) -> dict[str, np.ndarray]:
    """Every row of every shard of ``split`` (None: all) in manifest order, in memory (for checks and tests;
    training memory-maps).

    Returns:
        ``{"tokens", "loss_mask", "segment_ids"}`` arrays of shape ``[total_rows, seq_len]``.
    """
    manifest = read_manifest(folder)
    parts = [open_rows(folder, e) for e in manifest["shards"] if split in (None, e["split"])]
    seq_len = manifest["seq_len"]
    return {n: (np.concatenate([p[n] for p in parts]) if parts else np.zeros((0, seq_len), d))
            for n, d in ARRAYS.items()}


def positions(segment_ids: np.ndarray) -> np.ndarray:
    """Position of every token inside its example: restarts at 0 where the segment id changes.

    Args:
        segment_ids: integer ``[..., seq_len]``.
    Returns:
        int32 array of the same shape (padding positions count on from the last example; they carry no loss).
    """
    seg = np.asarray(segment_ids)
    idx = np.broadcast_to(np.arange(seg.shape[-1], dtype=np.int32), seg.shape)
    starts = np.ones(seg.shape, dtype=bool)
    starts[..., 1:] = seg[..., 1:] != seg[..., :-1]
    first = np.maximum.accumulate(np.where(starts, idx, 0), axis=-1)
    return (idx - first).astype(np.int32)


def shifted_targets(tokens: np.ndarray, loss_mask: np.ndarray, segment_ids: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Next-token labels and weights shifted per example (labels never cross an example boundary).

    Args:
        tokens, loss_mask, segment_ids: ``[..., seq_len]`` rows as stored.
    Returns:
        ``(labels, weights)``: ``labels[..., t] = tokens[..., t + 1]`` (int32, 0 at the last position) and
        ``weights[..., t] = loss_mask[..., t + 1]`` when ``segment_ids`` of ``t`` and ``t + 1`` are equal and
        non-zero, else 0 (float32). The SFT loss is ``sum(weights * nll) / sum(weights)`` over the whole batch.
    """
    tokens = np.asarray(tokens)
    seg = np.asarray(segment_ids)
    labels = np.zeros(tokens.shape, np.int32)
    labels[..., :-1] = tokens[..., 1:]
    weights = np.zeros(tokens.shape, np.float32)
    same = (seg[..., 1:] == seg[..., :-1]) & (seg[..., 1:] != 0)
    weights[..., :-1] = np.asarray(loss_mask)[..., 1:] * same
    return labels, weights


def _write_array(folder: str, rel: str, array: np.ndarray) -> str:
    path = os.path.join(folder, rel)
    with open(path, "wb") as f:
        f.write(np.ascontiguousarray(array).tobytes())
    return fsutil.sha256_file(path)


def _write_shard(folder: str, split: str, k: int, rows: dict[str, np.ndarray], index: pa.Table) -> dict:
    """Write one shard's three arrays and its index; return its manifest entry."""
    entry = {"split": split, "n_rows": len(rows["tokens"]), "seq_len": int(rows["tokens"].shape[1]),
             "n_examples": index.num_rows}
    for name, dtype in ARRAYS.items():
        rel = file_path(split, k, name)
        entry[name] = {"path": rel, "sha256": _write_array(folder, rel, rows[name].astype(dtype))}
    rel = file_path(split, k, "index")
    pq.write_table(index, os.path.join(folder, rel))
    entry["index"] = {"path": rel, "sha256": fsutil.sha256_file(os.path.join(folder, rel))}
    return entry


def write_shards(folder: str, rows: dict[str, np.ndarray], index: pa.Table, removed: pa.Table, manifest: dict,
                 validation_rows: int = 0, rows_per_shard: int = 4096) -> dict:
    """Write packed rows, their example index and the removed examples as an SFT shards folder (not in place:
    ``folder`` is the empty temporary folder of :func:`publisher`, which swaps it in).

    Args:
        rows: ``tokens`` / ``loss_mask`` / ``segment_ids`` arrays ``[n_rows, seq_len]`` (cast to
            :data:`ARRAYS`' dtypes); the first ``validation_rows`` rows are the validation split.
        index: :data:`INDEX_SCHEMA` rows with ``row`` numbering all rows (renumbered per shard here).
        removed: :data:`REMOVED_SCHEMA` rows.
        manifest: every other manifest field (``seq_len`` included); the layout fields are added.
    Returns:
        the stamped manifest as written.
    """
    n_rows = len(rows["tokens"])
    rows_col = index.column("row").to_numpy() if index.num_rows else np.zeros(0, np.int64)
    entries = []
    for split, lo0, hi0 in (("validation", 0, validation_rows), ("train", validation_rows, n_rows)):
        for k, lo in enumerate(range(lo0, hi0, rows_per_shard)):
            hi = min(lo + rows_per_shard, hi0)
            sel = np.flatnonzero((rows_col >= lo) & (rows_col < hi))
            part = index.take(pa.array(sel, pa.int64())).cast(INDEX_SCHEMA)
            part = part.set_column(0, "row", pa.array(rows_col[sel] - lo, pa.int64()))
            entries.append(_write_shard(folder, split, k, {n: a[lo:hi] for n, a in rows.items()}, part))
    pq.write_table(removed.cast(REMOVED_SCHEMA), os.path.join(folder, REMOVED_FILE))
    body = dict(manifest, dtype="uint16", n_rows=n_rows - validation_rows, validation_rows=validation_rows,
                shards=entries, removed_file={"path": REMOVED_FILE,
                                              "sha256": fsutil.sha256_file(os.path.join(folder, REMOVED_FILE))})
    return write_manifest(folder, body)


def listed_files(folder: str) -> set[str] | None:
    """The files an SFT shards manifest in ``folder`` lists (None: no readable SFT manifest there)."""
    try:
        manifest = fsutil.read_json(os.path.join(folder, "manifest.json"))
        if manifest.get("format") != FORMAT:
            return None
        return {"manifest.json", manifest["removed_file"]["path"]} | {e[n]["path"] for e in manifest["shards"]
                                                                     for n in FILES}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _is_complete(folder: str) -> bool:
    try:
        return not verify(folder)
    except (InputError, DamagedDataError):
        return False


def publisher(out_dir: str, inputs: "list[str] | tuple[str, ...]" = ()) -> publish.FolderPublisher:
    """The :class:`~xgen_data.store.publish.FolderPublisher` of an SFT shards folder (commit points ``sft.*``):
    one writer at a time, a folder of other files refused, the previous folder swapped out only once the new
    one is complete, and restored if a kill lands between the two renames; never one of (or holding) the
    ``inputs`` it reads."""
    return publish.FolderPublisher(out_dir, listed_files=listed_files, is_complete=_is_complete,
                                   what="SFT shards folder", crash_prefix="sft", inputs=inputs)
