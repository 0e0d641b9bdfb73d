"""The shard format: memory-mapped uint16 sequences plus a ``manifest.json`` and per-shard document index.

A shards directory (``format_version`` 1)::

    manifest.json
    <stage>/<substage>/shard-00000.bin          raw little-endian uint16, C order, [n_sequences, seq_len]
    <stage>/<substage>/shard-00000.idx.parquet  one row per document piece (see INDEX_SCHEMA)
    <stage>/<substage>/validation-00000.bin     held-out sequences (recipe ``heldout_sequences``), same layout

``manifest.json`` holds ``format``, ``format_version``, ``recipe`` (its name), ``recipe_sha256`` (SHA-256
of the recipe's TOML text), ``recipe_toml`` (that text), ``seed``, ``vocab_size`` (50,313),
``padded_vocab_size`` (51,200), ``eos_id`` (50256), ``dtype`` ("uint16"), ``stages`` (per sub-stage
seq_len, n_sequences, n_tokens, validation_sequences: all packed sequences, of which that many are held out)
and ``shards``: per shard ``path, index_path, stage, substage, split`` ("train" or "validation")
``, seq_len, n_sequences, sha256, index_sha256`` (SHA-256 of the ``.idx.parquet`` file) ``, tokens_per_subset,
tokens_per_source, eos_tokens``.
Paths are relative to the folder.

``manifest_sha256`` is the manifest's own checksum: the SHA-256 of the canonical JSON of every other field
(:func:`manifest_sha256`: sorted keys, ``(",", ":")`` separators, UTF-8, no ASCII escaping), so an edit of
the manifest itself (a token count, a proportion, a shard's sha256) is caught by :func:`read_manifest`, and
hence by every reader and ``xgen verify``. A manifest of the 0.x format (no ``manifest_sha256``, or a shard
without ``split`` or ``index_sha256``) is one :class:`ShardError` naming it and the ``xgen mix build`` that
rebuilds it.

Document boundaries: EOS (50256) ends every document piece that ends its document; in data mode no text
encodes to 50256 (SPEC §1), so EOS positions are exactly the boundaries. The index tells, for each piece,
its row and start in the shard, its length, subset, document id, source, offset inside the document and
the sequence's position before the per-chunk shuffle, so the pre-shuffle stream can be rebuilt.
"""
from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from xgen_data.errors import DamagedDataError, InputError
from xgen_data.store import fsutil, publish

FORMAT = "xgen-shards"
FORMAT_VERSION = 1
DTYPE = np.dtype("<u2")

INDEX_SCHEMA = pa.schema([
    ("row", pa.int64()),  # sequence row in this shard
    ("start", pa.int32()),  # token offset of the piece in the sequence
    ("length", pa.int32()),  # content tokens of the piece (its EOS, if any, follows at start + length)
    ("subset", pa.string()),
    ("doc_id", pa.string()),
    ("source", pa.string()),
    ("doc_offset", pa.int64()),  # offset of the piece's first token inside the document's tokens
    ("pre_shuffle_seq", pa.int64()),  # sequence number within the sub-stage before the shuffle
])


MANIFEST_SHA256 = "manifest_sha256"  # the manifest's self-checksum field


class ShardError(InputError):
    """A shards directory is missing, malformed, or does not match its manifest (names the file)."""


class ManifestChecksumError(ShardError, DamagedDataError):
    """``manifest.json``'s content does not match its ``manifest_sha256`` (the manifest was edited or damaged)."""


def _require(cond: bool, where: str, msg: str) -> None:
    if not cond:
        raise ShardError(f"{where}: {msg}")


def int_field(entry: dict, key: str, where: str, ctx: str) -> int:
    """``entry[key]`` as a non-negative int, or ShardError naming ``where``."""
    value = entry.get(key)
    _require(isinstance(value, int) and not isinstance(value, bool) and value >= 0, where,
             f"{ctx}: field {key!r} must be a non-negative int, got {value!r}")
    return value


def backup_dir(shard_dir: str) -> str:
    """Where a rebuild keeps the previous set of ``shard_dir`` while it swaps the new one in (a sibling;
    :func:`xgen_data.store.publish.backup_dir`)."""
    return publish.backup_dir(shard_dir)


def manifest_sha256(manifest: dict) -> str:
    """The self-checksum of a manifest: hex SHA-256 of its canonical JSON without the ``manifest_sha256`` field.

    Canonical JSON is ``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` encoded as
    UTF-8; it does not depend on the key order or indentation of the file, and Python floats survive the
    JSON round trip exactly, so the value computed at build time equals the one computed after reading.
    """
    return fsutil.self_checksum(manifest, MANIFEST_SHA256)


def write_manifest(shard_dir: str, manifest: dict) -> dict:
    """Stamp ``manifest`` with its ``manifest_sha256`` and write ``<shard_dir>/manifest.json`` atomically.

    The stamp replaces any earlier one and goes last in the file; the same manifest gives the same bytes.

    Returns:
        the stamped manifest (a new dict; ``manifest`` itself is not changed).
    """
    stamped = {k: v for k, v in manifest.items() if k != MANIFEST_SHA256}
    stamped[MANIFEST_SHA256] = manifest_sha256(stamped)
    fsutil.write_json(os.path.join(shard_dir, "manifest.json"), stamped)
    return stamped


def read_manifest(shard_dir: str | os.PathLike, check_sha256: bool = True) -> dict:
    """Read and check ``<shard_dir>/manifest.json`` (top-level fields and its self-checksum).

    Checks ``format == "xgen-shards"``, ``format_version`` 1, then (``check_sha256``) that ``manifest_sha256``
    equals :func:`manifest_sha256` of the content, then ``dtype == "uint16"``, integer ``eos_id`` and
    ``vocab_size``, that ``stages`` (non-empty) and ``shards`` are lists, and that every shard entry has a
    ``split`` and an ``index_sha256``. ``check_sha256=False`` (no self-checksum, no 0.x check) skips the self-checksum (only :func:`xgen_data.shards.packing.check_out_dir`,
    which decides whether a folder may be replaced by a rebuild, reads manifests that way).

    Raises:
        ManifestChecksumError: naming the manifest, when its content does not match ``manifest_sha256``
            (or that field is not a 64-digit hex string).
        ShardError: a manifest of the 0.x format (no ``manifest_sha256``, or a shard entry without ``split`` or
            ``index_sha256``): the message names it and the rebuild command.
        ShardError: naming the folder or manifest, for a missing folder or file, bad JSON or a bad field.
    """
    shard_dir = os.fspath(shard_dir)
    path = os.path.join(shard_dir, "manifest.json")
    if not os.path.exists(shard_dir) and os.path.isdir(backup_dir(shard_dir)):
        raise ShardError(f"{shard_dir}: missing: a `xgen mix build` into it was interrupted; the previous shards "
                         f"are in {backup_dir(shard_dir)} and the next build restores them first")
    _require(os.path.isdir(shard_dir), shard_dir, "not a directory")
    _require(os.path.isfile(path), shard_dir, "no manifest.json (not a shards directory; run `xgen mix build`)")
    try:
        manifest = fsutil.read_json(path)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ShardError(str(exc) if path in str(exc) else f"{path}: not valid JSON: {exc}") from None
    _require(isinstance(manifest, dict), path, "top level must be a JSON object")
    _require(manifest.get("format") == FORMAT, path, f"format must be {FORMAT!r}, got {manifest.get('format')!r}")
    _require(manifest.get("format_version") == FORMAT_VERSION, path,
             f"unsupported format_version {manifest.get('format_version')!r}; this reader supports [{FORMAT_VERSION}]")
    if check_sha256:
        _check_self_sha256(path, manifest)
    _require(manifest.get("dtype") == "uint16", path, f"dtype must be 'uint16', got {manifest.get('dtype')!r}")
    for key in ("eos_id", "vocab_size") + (("padded_vocab_size",) if "padded_vocab_size" in manifest else ()):
        int_field(manifest, key, path, "manifest")
    _require(isinstance(manifest.get("stages"), list) and bool(manifest["stages"]), path,
             "'stages' must be a non-empty list")
    _require(isinstance(manifest.get("shards"), list), path, "'shards' must be a list")
    if check_sha256:
        for i, entry in enumerate(manifest["shards"]):
            _require(isinstance(entry, dict), path, f"shards[{i}] is not an object")
            if missing := [k for k in ("split", "index_sha256") if k not in entry]:
                raise ShardError(f"{path}: shards[{i}] has no {missing[0]!r}: {_rebuild(path)}")
    return manifest


def _rebuild(path: str) -> str:
    return ("these shards were built by an older xgen (0.x); rebuild them with `xgen mix build --corpus DIR "
            f"--recipe R --out {os.path.dirname(path)}`")


def _check_self_sha256(path: str, manifest: dict) -> None:
    if MANIFEST_SHA256 not in manifest:  # present but null is an edit (below), absent an older format
        raise ShardError(f"{path}: no {MANIFEST_SHA256} (the manifest's own checksum): {_rebuild(path)}")
    want = manifest[MANIFEST_SHA256]
    if not (isinstance(want, str) and len(want) == 64 and all(c in "0123456789abcdef" for c in want)):
        raise ManifestChecksumError(f"{path}: {MANIFEST_SHA256} must be a 64-digit lowercase hex string, got "
                                    f"{want!r} (the manifest was edited or damaged; rebuild the shards with "
                                    "`xgen mix build`)")
    got = manifest_sha256(manifest)
    if got != want:
        raise ManifestChecksumError(f"{path}: content sha256 {got[:12]}… does not match its {MANIFEST_SHA256} "
                                    f"{want[:12]}… (the manifest was edited or damaged; rebuild the shards with "
                                    "`xgen mix build`)")


def open_shard(shard_dir: str, entry: dict) -> np.ndarray:
    """Memory-map one shard as a read-only uint16 array of shape ``[n_sequences, seq_len]``.

    Raises:
        ShardError: the file is missing or its size is not ``n_sequences × seq_len × 2`` bytes.
    """
    path = os.path.join(shard_dir, entry["path"])
    if not os.path.exists(path):
        raise ShardError(f"{path}: shard file listed in manifest.json is missing")
    shape = (int(entry["n_sequences"]), int(entry["seq_len"]))
    expected = shape[0] * shape[1] * DTYPE.itemsize
    if os.path.getsize(path) != expected:
        raise ShardError(f"{path}: {os.path.getsize(path)} bytes, manifest says {shape} uint16 = {expected} bytes")
    return np.memmap(path, dtype=DTYPE, mode="r", shape=shape)


def verify(shard_dir: str) -> list[str]:
    """Check every shard's size and SHA-256 against the manifest; return problems (empty when all match).

    Raises:
        ShardError: the manifest itself cannot be trusted (:func:`read_manifest`: missing, malformed, or its
            content does not match its ``manifest_sha256``); the message names the manifest.
    """
    manifest = read_manifest(shard_dir)
    problems = []
    for entry in manifest["shards"]:
        try:
            open_shard(shard_dir, entry)
        except ShardError as exc:
            problems.append(str(exc))
            continue
        digest = fsutil.sha256_file(os.path.join(shard_dir, entry["path"]))
        if digest != entry["sha256"]:
            problems.append(f"{entry['path']}: sha256 {digest[:12]}… does not match manifest {entry['sha256'][:12]}…")
        try:
            check_index(shard_dir, entry)
        except ShardError as exc:
            problems.append(str(exc))
    return problems


def check_index(shard_dir: str, entry: dict) -> str:
    """Check one shard's ``.idx.parquet`` against the manifest's ``index_sha256``; return its path.

    Raises:
        ShardError: naming the index file, when it is missing or its SHA-256 differs from the manifest's.
    """
    path = os.path.join(shard_dir, entry["index_path"])
    if not os.path.isfile(path):
        raise ShardError(f"{path}: index file listed in manifest.json is missing")
    want = entry["index_sha256"]
    got = fsutil.sha256_file(path)
    if got != want:
        raise ShardError(f"{path}: sha256 {got[:12]}… does not match manifest {str(want)[:12]}… (a damaged or "
                         "changed index: rebuild the shards with `xgen mix build`)")
    return path


def read_index(shard_dir: str, entry: dict) -> pa.Table:
    """The document-piece index of one shard (:data:`INDEX_SCHEMA`), checked against ``index_sha256``.

    Raises:
        ShardError: the index file is missing or damaged (:func:`check_index`).
    """
    return pq.read_table(check_index(shard_dir, entry))


def pre_shuffle_sequences(shard_dir: str, stage: str, substage: str) -> np.ndarray:
    """All sequences of a sub-stage in their order before the shuffle: uint16 ``[n_sequences, seq_len]``.

    Reads every shard of the sub-stage into memory (meant for checks and tests, not for training).
    """
    manifest = read_manifest(shard_dir)
    entries = [e for e in manifest["shards"] if e["stage"] == stage and e["substage"] == substage]
    if not entries:
        raise ShardError(f"{shard_dir}: no shards for stage {stage!r} sub-stage {substage!r}")
    n = sum(e["n_sequences"] for e in entries)
    out = np.zeros((n, entries[0]["seq_len"]), dtype=DTYPE)
    filled = np.zeros(n, dtype=bool)
    for e in entries:
        data = open_shard(shard_dir, e)
        rows = read_index(shard_dir, e).to_pydict()
        pre_of_row = {}
        for r, p in zip(rows["row"], rows["pre_shuffle_seq"]):
            pre_of_row[r] = p
        for r, p in pre_of_row.items():
            out[p] = data[r]
            filled[p] = True
    if not filled.all():
        raise ShardError(f"{shard_dir}: {int((~filled).sum())} sequences of {stage}/{substage} have no index entry")
    return out
