"""The SFT shard format: packed instruction-tuning rows (tokens, loss mask, segment ids), memory-mapped.

An SFT shards folder (``format`` ``"xgen-sft-shards"``, ``format_version`` 1)::

    manifest.json
    shard-00000.tokens.bin        little-endian uint16, C order, [n_rows, seq_len]: token ids, 0 on padding
    shard-00000.loss_mask.bin     uint8, [n_rows, seq_len]: 1 where the token is a training target
    shard-00000.segment_ids.bin   little-endian uint16, [n_rows, seq_len]: 1, 2, … per example in the row, 0 = padding
    shard-00000.idx.parquet       one row per packed example (:data:`INDEX_SCHEMA`)
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

``manifest.json`` holds ``format``, ``format_version``, ``seq_len``, ``dtype`` ("uint16"), ``eos_id``,
``vocab_size``, ``padded_vocab_size``, ``seed``, ``overlong`` ("drop" or "truncate"), ``rendering`` (the
format string, system header on/off, the EOS id, the generation stop strings), ``sources`` (per input file:
path, sha256, records, examples, per-shape counts, skipped errors), ``shapes`` (per-shape example counts over
all inputs), ``counts`` (records, examples, packed examples, dropped/truncated overlong, skipped, removed by
decontamination, rows, tokens, loss tokens, padding tokens), ``padding_share`` (padding tokens / row tokens),
``decontamination`` (eval sets with path, sha256, benchmark and items; removals per benchmark; and the
removed examples with the matching n-gram or substring and eval item id), ``shards`` (per shard:
``tokens_path``, ``loss_mask_path``, ``segment_ids_path``, ``index_path``, ``n_rows``, ``seq_len``,
``n_examples`` and the SHA-256 of each of the four files, keys ``*_sha256``), ``removed_path`` and
``removed_sha256``, and ``manifest_sha256``: the manifest's own checksum, computed exactly as for pre-training
shards (:func:`xgen_data.shards.shard_format.manifest_sha256`). Paths are relative to the folder.
"""
from __future__ import annotations

import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from xgen_data.errors import DamagedDataError, InputError, RefusedError
from xgen_data.shards import shard_format
from xgen_data.store import fsutil

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


def array_path(shard: int, name: str) -> str:
    """Relative path of array ``name`` (``tokens``, ``loss_mask``, ``segment_ids``) of shard number ``shard``."""
    return f"shard-{shard:05d}.{name}.bin"


def index_path(shard: int) -> str:
    return f"shard-{shard:05d}.idx.parquet"


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
    if not os.path.isfile(path):
        raise InputError(f"{path}: no manifest.json (not an SFT shards folder; run `xgen sft prepare`)")
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
    if not isinstance(want, str) or want != shard_format.manifest_sha256(manifest):
        raise DamagedDataError(f"{path}: content does not match its {shard_format.MANIFEST_SHA256} (the manifest "
                               "was edited or damaged; rerun `xgen sft prepare`)")
    for key in ("seq_len", "eos_id", "vocab_size"):
        shard_format.int_field(manifest, key, path, "manifest")
    if not isinstance(manifest.get("shards"), list):
        raise InputError(f"{path}: 'shards' must be a list")
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
        path = os.path.join(folder, entry[f"{name}_path"])
        if not os.path.isfile(path):
            raise DamagedDataError(f"{path}: file listed in manifest.json is missing")
        want = shape[0] * shape[1] * dtype.itemsize
        if os.path.getsize(path) != want:
            raise DamagedDataError(f"{path}: {os.path.getsize(path)} bytes, manifest says {shape} {dtype} = {want}")
        out[name] = np.memmap(path, dtype=dtype, mode="r", shape=shape)
    return out


def _shard_files(entry: dict) -> list[tuple[str, str]]:
    return [(entry[f"{n}_path"], entry[f"{n}_sha256"]) for n in ARRAYS] + [(entry["index_path"],
                                                                            entry["index_sha256"])]


def verify(folder: str | os.PathLike) -> list[str]:
    """Check every file's size and SHA-256 against the manifest; return the problems (empty when all match).

    Raises:
        InputError / DamagedDataError: the manifest itself cannot be trusted (:func:`read_manifest`).
    """
    folder = os.fspath(folder)
    manifest = read_manifest(folder)
    problems = []
    files = [(manifest["removed_path"], manifest["removed_sha256"])]
    for entry in manifest["shards"]:
        try:
            open_rows(folder, entry)
        except DamagedDataError as exc:
            problems.append(str(exc))
            continue
        files += _shard_files(entry)
    for rel, want in files:
        path = os.path.join(folder, rel)
        if not os.path.isfile(path):
            problems.append(f"{path}: file listed in manifest.json is missing")
        elif (got := fsutil.sha256_file(path)) != want:
            problems.append(f"{path}: sha256 {got[:12]}… does not match manifest {want[:12]}…")
    return problems


def read_index(folder: str | os.PathLike, entry: dict) -> pa.Table:
    """The per-example index of one shard (:data:`INDEX_SCHEMA`), checked against ``index_sha256``.

    Raises:
        DamagedDataError: the index file is missing or its SHA-256 differs from the manifest's.
    """
    path = os.path.join(os.fspath(folder), entry["index_path"])
    if not os.path.isfile(path) or fsutil.sha256_file(path) != entry["index_sha256"]:
        raise DamagedDataError(f"{path}: missing or its sha256 does not match manifest.json")
    return pq.read_table(path)


def read_removed(folder: str | os.PathLike) -> pa.Table:
    """The examples decontamination removed (:data:`REMOVED_SCHEMA`), checked against ``removed_sha256``."""
    manifest = read_manifest(folder)
    path = os.path.join(os.fspath(folder), manifest["removed_path"])
    if not os.path.isfile(path) or fsutil.sha256_file(path) != manifest["removed_sha256"]:
        raise DamagedDataError(f"{path}: missing or its sha256 does not match manifest.json")
    return pq.read_table(path)


def read_all(folder: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every row of every shard in manifest order, in memory (for checks and tests; training memory-maps).

    Returns:
        ``{"tokens", "loss_mask", "segment_ids"}`` arrays of shape ``[total_rows, seq_len]``.
    """
    manifest = read_manifest(folder)
    parts = [open_rows(folder, e) for e in manifest["shards"]]
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


def write_shards(folder: str, rows: dict[str, np.ndarray], index: pa.Table, removed: pa.Table, manifest: dict,
                 rows_per_shard: int = 4096) -> dict:
    """Write packed rows, their example index and the removed examples as an SFT shards folder (not in place:
    ``folder`` is new and empty; :func:`replace_folder` swaps it in).

    Args:
        rows: ``tokens`` / ``loss_mask`` / ``segment_ids`` arrays ``[n_rows, seq_len]`` (cast to
            :data:`ARRAYS`' dtypes).
        index: :data:`INDEX_SCHEMA` rows with ``row`` numbering all rows (renumbered per shard here).
        removed: :data:`REMOVED_SCHEMA` rows.
        manifest: every other manifest field (``seq_len`` included); ``shards`` and checksums are added.
    Returns:
        the stamped manifest as written.
    """
    n_rows = len(rows["tokens"])
    seq_len = int(manifest["seq_len"])
    rows_col = np.asarray(index.column("row").to_numpy()) if index.num_rows else np.zeros(0, np.int64)
    entries = []
    for k, lo in enumerate(range(0, max(n_rows, 1), rows_per_shard)):
        hi = min(lo + rows_per_shard, n_rows)
        entry = {"n_rows": hi - lo, "seq_len": seq_len}
        for name, dtype in ARRAYS.items():
            entry[f"{name}_path"] = array_path(k, name)
            entry[f"{name}_sha256"] = _write_array(folder, array_path(k, name), rows[name][lo:hi].astype(dtype))
        sel = np.flatnonzero((rows_col >= lo) & (rows_col < hi))
        part = index.take(pa.array(sel, pa.int64())).cast(INDEX_SCHEMA)
        part = part.set_column(0, "row", pa.array(rows_col[sel] - lo, pa.int64()))
        entry["index_path"] = index_path(k)
        pq.write_table(part, os.path.join(folder, index_path(k)))
        entry["index_sha256"] = fsutil.sha256_file(os.path.join(folder, index_path(k)))
        entry["n_examples"] = part.num_rows
        entries.append(entry)
    pq.write_table(removed.cast(REMOVED_SCHEMA), os.path.join(folder, "decontamination.parquet"))
    body = dict(manifest, shards=entries, removed_path="decontamination.parquet",
                removed_sha256=fsutil.sha256_file(os.path.join(folder, "decontamination.parquet")))
    return write_manifest(folder, body)


def _ours(folder: str) -> bool:
    """Whether ``folder`` holds only what an SFT shards manifest lists (so a rebuild may replace it)."""
    try:
        manifest = fsutil.read_json(os.path.join(folder, "manifest.json"))
        listed = {"manifest.json", manifest["removed_path"]}
        for e in manifest["shards"]:
            listed |= {e[f"{n}_path"] for n in ARRAYS} | {e["index_path"]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return manifest.get("format") == FORMAT and set(os.listdir(folder)) <= listed


def backup_dir(folder: str) -> str:
    head, tail = os.path.split(os.path.abspath(folder).rstrip(os.sep))
    return os.path.join(head, f".{tail}.backup")


def start_folder(out_dir: str) -> str:
    """Check ``out_dir`` may be (re)written and make the empty build folder next to it; return that folder.

    A folder left by an interrupted swap is restored first (``.<out>.backup`` back to ``out_dir``).

    Raises:
        RefusedError: ``out_dir`` is a file, or a non-empty folder holding anything but SFT shards.
    """
    out = os.path.realpath(out_dir)
    if not os.path.exists(out) and os.path.isdir(backup_dir(out)):
        os.replace(backup_dir(out), out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise RefusedError(f"{out_dir}: exists and is not a folder")
    if os.path.isdir(out) and os.listdir(out) and not _ours(out):
        raise RefusedError(f"{out_dir}: folder is not empty and is not an SFT shards folder (or holds files its "
                           "manifest does not list); choose another --out or empty it")
    head, tail = os.path.split(out)
    if not os.path.isdir(head):
        raise InputError(f"{out_dir}: parent folder {head} does not exist")
    tmp = os.path.join(head, f".{tail}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    return tmp


def replace_folder(tmp: str, out_dir: str) -> None:
    """Swap the finished build ``tmp`` in as ``out_dir``: a kill at any point leaves the old set (in
    ``out_dir`` or its backup, which :func:`start_folder` restores) or the new one."""
    out = os.path.realpath(out_dir)
    if os.path.exists(out):
        shutil.rmtree(backup_dir(out), ignore_errors=True)
        os.replace(out, backup_dir(out))
        fsutil.crash_point("sft.after_backup")
        os.replace(tmp, out)
        shutil.rmtree(backup_dir(out))
    else:
        os.replace(tmp, out)
