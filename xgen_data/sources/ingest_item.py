"""Ingest's work item: one input file (or every ``of``-th batch of it) read, hashed, decoded and tokenized
into a temporary batch file.

:func:`tokenize_file` is the item function of :class:`xgen_data.sources.ingest.IngestStep` (the step contract,
:mod:`xgen_data.execute.contract`): a module-level function of its arguments alone, so any executor runs it
in any process and order. It opens the input once (:func:`readers.open_input`: SHA-256 of the open file),
reads the records from the same open file (a sequential read hashes the bytes it reads and compares: what
is read is what is hashed; a file changed meanwhile is an ``InputError`` naming it), decodes and tokenizes
them in batches (:func:`process_batch`, SPEC §1 data mode) and writes each batch's documents as one row group
of a temporary Parquet file in the step's work folder (:data:`DOC_SCHEMA` plus the input ``line`` of each
document).

A big input is split into ``of`` items for balance: item ``part`` tokenizes the batches whose index is
``part`` modulo ``of``. Every such item reads (and hashes) the whole file and cuts it into the same batches,
so the commit, taking batch ``j`` from item ``j % of``, sees the batches a single item would have written.

An item keeps no state across files and decides nothing that depends on other files: duplicate ids, part names
and the registry are the commit's (:mod:`xgen_data.sources.ingest`), which replays the batches in input
order. Records that fail validation are counted per batch and the first few kept as examples (the commit
shows at most five in all); with ``on_error="raise"`` the item stops at the first one, and at a broken
stream, and leaves raising to the commit, which raises it at its place in the file (after any duplicate id
before it). Nothing an item writes is visible in the corpus.
"""
from __future__ import annotations

import collections
import contextlib
import errno
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq

from xgen_data import tokenizer
from xgen_data.execute.contract import ItemResult
from xgen_data.sources import readers
from xgen_data.store import fsutil
from xgen_data.store.corpus import DOC_SCHEMA, check_name

#: Default subset for well-known corpus file stems; any other stem is its own subset name.
SUBSET_BY_STEM = {"nl": "natural", "natural": "natural", "code": "code", "instruct": "instruct"}
#: The temporary batch file: the corpus columns plus the input line (or Parquet row) of each document.
BATCH_SCHEMA = DOC_SCHEMA.append(pa.field("line", pa.int64(), nullable=False))
#: Skipped records kept with their place per file (the commit shows at most five examples in all).
SHOWN_ERRORS = 5


def default_subset(path: str) -> str:
    """Subset name for an input file: ``nl.jsonl.zst`` -> ``natural``; otherwise the name's stem."""
    stem = os.path.basename(path).split(".")[0]
    return SUBSET_BY_STEM.get(stem, stem)


def input_key(subset: str, digest: str, metadata_tokens: bool, id_from: str | None = None) -> str:
    """The registry key of an input: ``subset:sha256`` (``:metadata-tokens`` when its tokens carry the prefix,
    ``:id-sha256`` when its missing ids are made from the text: other documents, another entry)."""
    return f"{subset}:{digest}" + (":metadata-tokens" if metadata_tokens else "") + \
        (":id-sha256" if id_from == "sha256" else "")


def problem_kind(problem: str) -> str:
    """The ``skipped`` counter a record problem is counted under (``malformed_json``, ``invalid_utf-8``, ...)."""
    for kind in ("malformed JSON", "invalid UTF-8", "missing 'text'", "missing 'id'"):
        if problem.startswith(kind) or kind in problem:
            return kind.replace("'", "").replace(" ", "_").lower()
    return "invalid_record"


def damaged_parts(docs_dir: str, entry: dict) -> list[tuple[str, str]]:
    """``(part, problem)`` for each registered part of an input entry (in ``docs_dir``) that is missing or whose
    SHA-256 differs from the one recorded at ingest."""
    out = []
    for name in entry["parts"]:
        path = os.path.join(docs_dir, name)
        if not os.path.isfile(path):
            out.append((name, "missing"))
        elif fsutil.sha256_file(path) != entry["part_sha256"][name]:
            out.append((name, "sha256 differs from the one recorded at ingest"))
    return out


def process_batch(raw: list[readers.RawRecord]) -> tuple[pa.RecordBatch | None, np.ndarray, list[tuple[str, int, str]]]:
    """Decode, validate and tokenize one batch of raw records.

    Returns:
        ``(batch, lines, errors)``: a RecordBatch with :data:`DOC_SCHEMA` (None when every record failed),
        ``int64[batch rows]`` the input line (or Parquet row) of each document, and ``(file, line,
        problem)`` for each record that failed validation.
    """
    docs, lines, errors = [], [], []
    for rec in raw:
        try:
            docs.append(readers.decode_record(rec))
            lines.append(rec.line)
        except readers.RecordError as exc:
            errors.append((exc.file, exc.line, exc.problem))
    if not docs:
        return None, np.zeros(0, dtype=np.int64), errors
    texts = [d["text"] for d in docs]
    flat, lengths = tokenizer.encode_to_arrays(texts)
    if any(d.get("_prefix") for d in docs):
        flat, lengths = _with_metadata_tokens(docs, flat, lengths)
    offsets = np.zeros(len(texts) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    text_arr = pa.array(texts, type=pa.string())
    n_bytes = pa.compute.binary_length(text_arr).to_numpy(zero_copy_only=False).astype(np.int64)
    cols = {k: pa.array([d[k] for d in docs], type=pa.string()) for k in ("id", "source", "license", "language", "path", "meta")}
    cols.update(
        text=text_arr,
        n_chars=pa.compute.utf8_length(text_arr).cast(pa.int64()),
        n_bytes=pa.array(n_bytes),
        n_tokens=pa.array(lengths),
        tokens=pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=pa.uint16())),
    )
    return (pa.RecordBatch.from_arrays([cols[f.name] for f in DOC_SCHEMA], schema=DOC_SCHEMA),
            np.asarray(lines, dtype=np.int64), errors)


def metadata_token_ids(repo: str | None, filename: str | None, stars: str | None) -> np.ndarray:
    """StarCoder's metadata prefix as token ids: ``<reponame>`` repo ``<filename>`` path ``<gh_stars>`` bucket,
    then a newline; the special tokens are inserted by id (SPEC §1 ids), their values encoded in data mode,
    so no text can produce them. Parts the record does not give are left out; all missing: no prefix."""
    ids: list[int] = []
    for token, value in (("<reponame>", repo), ("<filename>", filename), ("<gh_stars>", stars)):
        if value is not None:
            ids.append(tokenizer.FIRST_SPECIAL_ID + tokenizer.CODE_SPECIAL_TOKENS.index(token))
            ids += tokenizer.encode(value)
    if ids:
        ids += tokenizer.encode("\n")
    return np.asarray(ids, dtype=np.int64)


def _with_metadata_tokens(docs, flat: np.ndarray, lengths: np.ndarray):
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    pieces, out_len = [], []
    for i, d in enumerate(docs):
        pre = metadata_token_ids(*d["_prefix"]) if d.get("_prefix") else np.zeros(0, np.int64)
        pieces += [pre.astype(flat.dtype), flat[offsets[i]:offsets[i + 1]]]
        out_len.append(len(pre) + int(lengths[i]))
    return np.concatenate(pieces), np.asarray(out_len, dtype=lengths.dtype)


def batches(records: Iterable[readers.RawRecord], max_docs: int, max_bytes: int) -> Iterator[list[readers.RawRecord]]:
    """``records`` in lists of at most ``max_docs`` records, cut once their payloads reach ``max_bytes``."""
    batch, size = [], 0
    for rec in records:
        batch.append(rec)
        size += len(rec.payload) if isinstance(rec.payload, bytes) else \
            len(str(rec.payload.get("text", rec.payload.get("content", ""))))
        if len(batch) >= max_docs or size >= max_bytes:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


@dataclass
class BatchInfo:
    """One batch of the input as the commit replays it: ``rows`` documents (a row group of the batch file when
    > 0), ``kinds`` the failed records counted by kind, ``shown`` the first failed records ``(file, line, problem)``."""

    rows: int
    kinds: dict[str, int] = field(default_factory=dict)
    shown: list[tuple[str, int, str]] = field(default_factory=list)


@dataclass
class FileTokens:
    """What :func:`tokenize_file` computed for one input (the value of its :class:`ItemResult`).

    ``intact``: the input's registry entry (``key``) exists and its parts are whole (checked by ``part`` 0;
    the other parts only see that the entry exists), so nothing was read past the hash and ``batch_file`` is
    None. ``part`` of ``of``: the batches ``j`` with ``j % of == part``. ``broken``: where the stream stopped being readable,
    ``(file, line, problem, truncated)``; None for a file read to its end.
    """

    path: str
    subset: str
    digest: str
    key: str
    part: int = 0
    of: int = 1
    prefix: str = ""  # what its parts' names start with (:func:`part_prefix`)
    intact: bool = False
    batch_file: str | None = None
    batches: list[BatchInfo] = field(default_factory=list)
    broken: tuple[str, int, str, bool] | None = None
    n_bytes: int = 0
    seconds: float = 0.0


def resolve_subset(path: str, subset: str | None, layout: readers.Layout | None) -> str:
    """The subset an input goes to: ``subset`` if given, ``starcoder`` for StarCoderData / The Stack files,
    else from the file name (:func:`default_subset`). Raises InputError for an invalid name."""
    if subset is None and layout is not None and layout.starcoder:
        subset = "starcoder"
    return check_name(default_subset(path) if subset is None else subset, "subset")


def write_error(exc: OSError, what: str) -> OSError:
    """``exc`` with the file being written named (a full disk raises ENOSPC without a file name)."""
    hint = "; free disk space and run the ingest again" if exc.errno == errno.ENOSPC else ""
    return OSError(exc.errno, f"cannot write {what}: {exc.strerror or exc}{hint}")


def part_prefix(path: str, digest: str, metadata_tokens: bool, id_from: str | None = None) -> str:
    """The name its parts start with: ``<stem>-<sha256[:8]>`` (``-m`` with metadata tokens, ``-s`` with ids made
    from the text: other bytes, other names, so a crash between two runs never mixes them); parts add
    ``-00000.parquet``."""
    return f"{os.path.basename(path).split('.')[0]}-{digest[:8]}" + ("-m" if metadata_tokens else "") + \
        ("-s" if id_from == "sha256" else "")


def tokenize_file(path: str, subset: str | None, columns: tuple[tuple[str, str], ...], metadata_tokens: bool,
                  on_error: str, registered: dict[str, dict], docs_root: str, batch_file: str,
                  batch_docs: int, batch_bytes: int, part: int = 0, of: int = 1,
                  id_from: str | None = None) -> ItemResult:
    """Ingest's item: read, hash and tokenize the input at ``path`` into ``batch_file`` (see the module docstring).

    Args:
        registered: the registry entries recorded for this input's location (key -> entry); when the input's
            key is among them and its parts under ``docs_root/<subset>`` are whole, the item stops after the hash.
        batch_file: where to write the batch file (the step's work folder, which the commit reads and removes).
        batch_docs, batch_bytes: the batch size (records, payload bytes); one row group per batch.
        part, of: tokenize the batches ``j`` with ``j % of == part`` (the whole file is still read and hashed).
        id_from: how a record without an id gets one (:data:`readers.ID_FROM`); None: such a record is bad.
    Returns:
        ItemResult whose value is a :class:`FileTokens`; ``documents`` counts the records read, ``bytes`` the
        input's size.
    Raises:
        InputError: ``path`` is not a regular file, or changed while it was read (names it).
        RecordError: an unreadable Parquet file. OSError: the batch file cannot be written (names the parts
            it is for; nothing is left of it).
    """
    t0 = time.time()
    with contextlib.closing(readers.open_input(path)) as opened:  # one open file: hashed, then read
        layout = readers.detect_layout(path, columns, metadata_tokens, fileobj=opened.file)
        subset = resolve_subset(path, subset, layout)
        key = input_key(subset, opened.sha256, metadata_tokens, id_from)
        out = FileTokens(path, subset, opened.sha256, key, part, of, prefix=part_prefix(path, opened.sha256,
                                                                                        metadata_tokens, id_from))
        entry = registered.get(key)
        if entry is not None and (part > 0 or not damaged_parts(os.path.join(docs_root, subset), entry)):
            out.intact = True
        else:
            out.batch_file = batch_file
            try:
                _tokenize_opened(opened, layout, on_error, (batch_docs, batch_bytes), os.path.join(docs_root, subset),
                                 id_from, out)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.remove(out.batch_file)
                raise
    out.seconds = time.time() - t0
    n_read = sum(b.rows + sum(b.kinds.values()) for b in out.batches)
    return ItemResult(path, out, documents=n_read, bytes=out.n_bytes if part == 0 else 0, seconds=out.seconds)


def _tokenize_opened(opened: readers.OpenedInput, layout: readers.Layout | None, on_error: str,
                     limits: tuple[int, int], docs_dir: str, id_from: str | None, out: FileTokens) -> None:
    """Tokenize the records of ``opened`` into ``out.batch_file``, filling ``out.batches`` and ``out.broken``."""
    path = opened.path
    sequential = readers.input_format(path) != "parquet"  # Parquet is read at random offsets: fstat compared
    source = readers.HashingReader(opened.file) if sequential else opened.file
    stem = os.path.basename(path).split(".")[0]
    records = _until_cut(readers.iter_raw(path, id_prefix=f"{stem}#{opened.sha256[:12]}", layout=layout,
                                          fileobj=source, id_from=id_from), on_error, out)
    n_shown, stopped = 0, False
    os.makedirs(os.path.dirname(out.batch_file), exist_ok=True)
    what = f"corpus part {docs_dir}/{out.prefix}-*.parquet (its batches, as {out.batch_file})"
    try:
        writer = pq.ParquetWriter(out.batch_file, BATCH_SCHEMA, compression="zstd")
    except OSError as exc:
        raise write_error(exc, what) from exc
    with writer:
        try:
            for j, raw in enumerate(batches(records, *limits)):
                if j % out.of != out.part:
                    continue
                batch, lines, errors = process_batch(raw)
                info = BatchInfo(batch.num_rows if batch is not None else 0)
                info.kinds = dict(collections.Counter(problem_kind(p) for _, _, p in errors))
                info.shown = errors[:max(0, SHOWN_ERRORS - n_shown)]
                n_shown += len(info.shown)
                out.batches.append(info)
                if errors and on_error == "raise":
                    info.rows, stopped = 0, True  # the commit raises this error: no later document is needed
                    break
                if batch is not None:
                    _write_batch(writer, batch, lines, what)
        except readers.StreamError as exc:
            out.broken = (exc.file, exc.line, exc.problem, exc.truncated)
    if stopped or (out.broken is not None and not (out.broken[3] and on_error == "skip")):
        return  # the commit raises the record's or the stream's error
    if sequential:
        source.drain()  # the bytes after a truncated stream's break count too
    opened.check_unchanged(source.hexdigest() if sequential else None)
    out.n_bytes = opened.file.seek(0, os.SEEK_END)



def _write_batch(writer: pq.ParquetWriter, batch: pa.RecordBatch, lines: np.ndarray, what: str) -> None:
    try:
        writer.write_batch(pa.RecordBatch.from_arrays([*batch.columns, pa.array(lines)], schema=BATCH_SCHEMA),
                           row_group_size=batch.num_rows)
    except OSError as exc:
        raise write_error(exc, what) from exc


def _until_cut(records: Iterator[readers.RawRecord], on_error: str, out: FileTokens) -> Iterator[readers.RawRecord]:
    """``records`` up to a truncated stream's break with ``on_error="skip"`` (the records before a cut are exact
    and kept; the break goes to ``out.broken``); any other broken stream raises :class:`readers.StreamError`."""
    try:
        yield from records
    except readers.StreamError as exc:
        if not (exc.truncated and on_error == "skip"):
            raise
        out.broken = (exc.file, exc.line, exc.problem, exc.truncated)
