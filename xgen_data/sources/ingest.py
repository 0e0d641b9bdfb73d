"""``xgen ingest``: raw JSONL / JSONL.gz / JSONL.zst / Parquet files into a tokenized Parquet corpus.

The main process streams raw lines from disk in batches; worker processes decode JSON, validate
records (:func:`xgen_data.sources.readers.decode_record`) and tokenize them in data mode (SPEC §1); the main
process writes zstd Parquet parts. At most ``2 × workers`` batches are in flight, so memory does not grow
with corpus size. Parts are written under temporary names and renamed once the whole input file is done;
``corpus.json`` is updated last, so a crash never leaves a half-ingested file visible.

An input is opened once (:func:`readers.open_input`): its SHA-256 is computed from the open file, and the
records are read from the same open file, rewound, so a file replaced by a rename meanwhile cannot put one
file's documents under another's checksum. A sequential read (JSONL) hashes the bytes it reads and compares;
a Parquet read compares the file's ``fstat`` (size, times); a file changed in place during the ingest is an
``InputError`` naming it, and nothing of it is registered.

Each part's SHA-256 is recorded in ``corpus.json`` as ``inputs[key]["part_sha256"] = {part_name: hex}``
(hashed from the temporary file just before its rename), so later readers can detect a damaged part.

Inputs are local paths or fsspec URIs (``s3://bucket/prefix/``, ``gs://``, ``hf://``, ``file://``: every
opening goes through :func:`xgen_data.sources.locations.open_binary`). Folders and prefixes
(:func:`find_inputs`) are read recursively; hidden entries, unsupported files and the corpus
itself are skipped and listed. A file found in a folder records the folder and its path relative to it.

Re-running is idempotent: an input file whose SHA-256 was already ingested into the subset is skipped
(``unchanged``) unless one of its parts is missing or its SHA-256 differs from the recorded one: then its
parts are written again from the input (``repaired``). A file ingested before under the same path with
other content replaces its old parts (``replaced``).

Document ids are unique within a subset. A document whose id is already in the subset (from an earlier
input, or earlier in the same file) is an error naming both places (``file:line``) with
``on_error="raise"``, and is skipped and counted as ``duplicate_id`` with ``on_error="skip"``. The check
keeps 64-bit id hashes (:mod:`xgen_data.sources.idindex`, 16 bytes per known document, recomputed from the parts
at each run, in memory up to 2^20 ids and in sorted runs on disk beyond) and confirms every hash match on the real id, so a hash collision never drops a document.

A truncated ``.gz`` / ``.zst`` stream (a cut file) is a :class:`readers.StreamError` naming the file and the
line where the stream broke with ``on_error="raise"`` (nothing of that file is registered); with
``on_error="skip"`` the records before the break (exact: a cut stream decodes correctly up to the cut) are
kept, the break is counted as ``truncated_stream`` and listed with its line in the report, and the next file
is read. A corrupt stream or Parquet file (damaged bytes) stops the ingest in both modes: what was decoded
before the damage was detected may be wrong.
"""
from __future__ import annotations

import array
import collections
import concurrent.futures as cf
import contextlib
import errno
import itertools
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq

from xgen_data import tokenizer
from xgen_data.errors import InputError
from xgen_data.execute import executors
from xgen_data.sources import idindex, locations, readers
from xgen_data.store import fsutil
from xgen_data.store.corpus import DOC_SCHEMA, Corpus, check_name

#: Default subset for well-known corpus file stems; any other stem is its own subset name.
SUBSET_BY_STEM = {"nl": "natural", "natural": "natural", "code": "code", "instruct": "instruct"}
BATCH_DOCS = 256
BATCH_BYTES = 4 << 20
PART_DOCS = 16384
PART_BYTES = 48 << 20


def default_subset(path: str) -> str:
    """Subset name for an input file: ``nl.jsonl.zst`` -> ``natural``; otherwise the name's stem."""
    stem = os.path.basename(path).split(".")[0]
    return SUBSET_BY_STEM.get(stem, stem)


@dataclass
class FileReport:
    """What ingesting one input file did (counts are documents)."""

    path: str
    subset: str
    status: str = "ingested"  # ingested | unchanged | replaced | repaired
    n_read: int = 0
    n_written: int = 0
    n_tokens: int = 0
    n_bytes: int = 0
    skipped: collections.Counter = field(default_factory=collections.Counter)
    # first few skipped records, "file:line: problem", then where a truncated or corrupt stream broke off
    examples: list[str] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)
    seconds: float = 0.0
    name: str = ""  # how to show the input: its path relative to the folder given, else its file name


def _problem_kind(problem: str) -> str:
    for kind in ("malformed JSON", "invalid UTF-8", "missing 'text'"):
        if problem.startswith(kind) or kind in problem:
            return kind.replace("'", "").replace(" ", "_").lower()
    return "invalid_record"


def process_batch(raw: list[readers.RawRecord]) -> tuple[pa.RecordBatch | None, np.ndarray, list[tuple[str, int, str]]]:
    """Decode, validate and tokenize one batch of raw records (runs in a worker process).

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


def _batches(records: Iterable[readers.RawRecord]) -> Iterator[list[readers.RawRecord]]:
    batch, size = [], 0
    for rec in records:
        batch.append(rec)
        size += len(rec.payload) if isinstance(rec.payload, bytes) else \
            len(str(rec.payload.get("text", rec.payload.get("content", ""))))
        if len(batch) >= BATCH_DOCS or size >= BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _init_worker() -> None:
    fsutil.exit_with_parent()
    tokenizer.get_encoding()  # load ranks once per worker


@contextlib.contextmanager
def worker_pool(workers: int, executor: str = "local", ray_address: str | None = None
                ) -> Iterator[cf.Executor | None]:
    """The tokenizer workers: ``workers`` processes (None when ``workers <= 1``: run in-process), or Ray tasks
    with ``executor="ray"`` (:func:`xgen_data.execute.executors.step_pool`).

    Local workers are started with ``spawn`` (safe whatever threads the parent runs) and load the tokenizer
    once; reuse one pool across input files. :func:`process_batch` is a pure function of its batch, so the
    parts are the same bytes whichever executor ran it.
    """
    with executors.step_pool(executor, workers, ray_address, initializer=_init_worker) as pool:
        yield pool


def map_bounded(fn, items: Iterable, pool: cf.Executor | None, in_flight: int = 4) -> Iterator:
    """Ordered ``map(fn, items)`` on ``pool`` with at most ``in_flight`` items submitted at once.

    ``pool=None`` runs in this process. Unlike ``Pool.imap``, input is consumed only as results are
    taken, so memory stays bounded for any stream length.
    """
    if pool is None:
        yield from map(fn, items)
        return
    pending: collections.deque = collections.deque()
    it = iter(items)
    for item in itertools.islice(it, in_flight):
        pending.append(pool.submit(fn, item))
    while pending:
        result = pending.popleft().result()
        for item in itertools.islice(it, 1):
            pending.append(pool.submit(fn, item))
        yield result


@dataclass(frozen=True)
class InputFile:
    """One file to ingest: ``path`` to open; ``folder`` given on the command line (None for a file given
    directly) and ``rel``, the path relative to that folder (the file name for a direct file)."""

    path: str
    folder: str | None
    rel: str


def find_inputs(paths: Iterable[str], corpus_dir: str | None = None,
                recursive: bool = True) -> tuple[list[InputFile], list[tuple[str, str]]]:
    """The files to ingest for ``paths``: files as given, and the supported files under each folder, recursively
    (``recursive=False``: only those directly inside it; its sub-folders are not listed).

    Folders are walked in sorted order (files sorted by relative path). Skipped, with the reason: hidden
    files and folders (name starting with ``.``), files of other types (``unsupported extension .csv``),
    symbolic links to folders (not followed, so a link loop cannot recurse) and the corpus folder itself
    (``corpus_dir``, when it lies inside a folder given), and entries that are not regular files (FIFOs, sockets,
    devices, broken links: ``special file (FIFO (named pipe))``).

    Returns:
        ``(files, skipped)``: :class:`InputFile` list in order, and ``(path, reason)`` for every skipped entry.
    Raises:
        ValueError: a folder holds no supported file, or is the corpus folder itself (or inside it).
    """
    files: list[InputFile] = []
    skipped: list[tuple[str, str]] = []
    corpus_root = os.path.realpath(corpus_dir) if corpus_dir else None
    for given in paths:
        if locations.is_uri(given):
            files += _find_uri_inputs(given, skipped)
            continue
        if not os.path.isdir(given):
            files.append(InputFile(given, None, os.path.basename(given)))
            continue
        real = os.path.realpath(given)
        if corpus_root and (real == corpus_root or real.startswith(corpus_root + os.sep)):
            raise InputError(f"{given}: is the corpus being written ({corpus_dir}) or inside it; ingest raw files "
                             "from elsewhere")
        found: list[InputFile] = []
        for folder, dirs, names in os.walk(given):
            keep = []
            for d in sorted(dirs):
                full = os.path.join(folder, d)
                if d.startswith("."):
                    skipped.append((full, "hidden folder"))
                elif os.path.islink(full):
                    skipped.append((full, "link to a folder (not followed)"))
                elif corpus_root and os.path.realpath(full) == corpus_root:
                    skipped.append((full, "folder of the corpus being written"))
                else:
                    keep.append(d)
            dirs[:] = keep if recursive else []
            for name in sorted(names):
                full = os.path.join(folder, name)
                if name.startswith("."):
                    skipped.append((full, "hidden file"))
                    continue
                kind = readers.special_kind(full)
                if kind is not None:  # a FIFO would block the hash, a device has no end
                    skipped.append((full, f"special file ({kind})"))
                    continue
                try:
                    readers.input_format(name)
                except ValueError:
                    ext = os.path.splitext(name)[1].lower() or "(none)"
                    skipped.append((full, f"unsupported extension {ext}"))
                    continue
                found.append(InputFile(full, given, os.path.relpath(full, given)))
        if not found:
            raise InputError(f"{given}: folder has no {', '.join(readers.SUPPORTED_SUFFIXES)} files"
                             + (" (also in sub-folders)" if recursive else ""))
        files += sorted(found, key=lambda f: f.rel)
    return files, skipped


def _find_uri_inputs(given: str, skipped: list[tuple[str, str]]) -> list[InputFile]:
    """:func:`find_inputs` for a URI: the file itself, or the supported files under a folder or prefix URI
    (sorted by relative path; other types are added to ``skipped``).

    Raises:
        ValueError: a prefix holds no supported file. FileNotFoundError: nothing at ``given``.
    """
    if not locations.is_dir(given):
        locations.input_identity(given)  # FileNotFoundError naming it
        return [InputFile(given, None, given.rstrip("/").rsplit("/", 1)[-1])]
    found = []
    for uri in locations.find_files(given):
        try:
            readers.input_format(uri)
        except ValueError:
            skipped.append((uri, f"unsupported extension {os.path.splitext(uri)[1].lower() or '(none)'}"))
            continue
        found.append(InputFile(uri, given, locations.relative(uri, given)))
    if not found:
        raise InputError(f"{given}: folder has no {', '.join(readers.SUPPORTED_SUFFIXES)} files (also in sub-folders)")
    return found


def summarize_skipped(skipped: list[tuple[str, str]]) -> list[str]:
    """One line per reason for :func:`find_inputs`'s skipped entries, e.g. ``2 files: unsupported extension (.csv, .txt)``."""
    by_reason: dict[str, list[str]] = collections.defaultdict(list)
    for path, reason in skipped:
        key = "unsupported extension" if reason.startswith("unsupported extension") else reason
        by_reason[key].append(path if key != "unsupported extension" else reason.split()[-1])
    lines = []
    for reason, items in sorted(by_reason.items()):
        if reason == "unsupported extension":
            exts = sorted(set(items))
            lines.append(f"{len(items)} file{'s' * (len(items) != 1)} with an unsupported extension ({', '.join(exts)}; "
                         f"supported: {', '.join(readers.SUPPORTED_SUFFIXES)})")
        else:
            shown = ", ".join(items[:3]) + (f", ... ({len(items) - 3} more)" if len(items) > 3 else "")
            noun, _, rest = reason.partition(" of ") if reason.startswith("folder of") else reason.partition(" (")
            noun = noun + "s" * (len(items) != 1)
            tail = (" of " + rest) if reason.startswith("folder of") else (f" ({rest}" if rest else "")
            lines.append(f"{len(items)} {noun}{tail}: {shown}")
    return lines


def _damaged_parts(corpus: Corpus, entry: dict) -> list[tuple[str, str]]:
    """``(part, problem)`` for each registered part of an input entry that is missing or whose SHA-256 differs."""
    out = []
    for name in entry["parts"]:
        path = os.path.join(corpus.docs_dir(entry["subset"]), name)
        if not os.path.isfile(path):
            out.append((name, "missing"))
        elif fsutil.sha256_file(path) != entry["part_sha256"][name]:
            out.append((name, "sha256 differs from the one recorded at ingest"))
    return out


class _Sources:
    """Where the documents behind :class:`~xgen_data.sources.idindex.IdIndex` entries are, to confirm ids and name places.

    A source is a part file: an existing part of the subset (named by the input file it came from) or a
    part of the input being ingested (its lines are kept, 8 bytes per document of that input; the part
    still being written keeps its ids in memory, at most one part's worth).
    """

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.origin: list[tuple[str, str, str | None]] = []  # (input path, input sha256, part name) or current
        self.lines: dict[int, array.array] = {}  # source -> input line per row (parts of the current input)
        self.open_src: int | None = None
        self.open_ids: list[pa.Array] = []  # id arrays of the batches written to the open part
        self._cache: tuple[int, list[str]] | None = None

    def add(self, path: str, origin: tuple[str, str, str | None], lines: bool = False) -> int:
        self.paths.append(path)
        self.origin.append(origin)
        if lines:
            self.lines[len(self.paths) - 1] = array.array("q")
        return len(self.paths) - 1

    def id_at(self, src: int, row: int) -> str:
        if src == self.open_src:
            for chunk in self.open_ids:
                if row < len(chunk):
                    return chunk[row].as_py()
                row -= len(chunk)
            raise IndexError(row)
        if self._cache is None or self._cache[0] != src:
            self._cache = (src, pq.read_table(self.paths[src], columns=["id"]).column("id").to_pylist())
        return self._cache[1][row]

    def where(self, src: int, row: int, doc_id: str, locate: bool) -> str:
        """``file:line`` of a stored document; for an earlier input without kept lines, its line is looked
        up in that input file when ``locate`` (error path: one read of that file), else its corpus part and row."""
        input_path, digest, part = self.origin[src]
        if src in self.lines:
            return f"{input_path}:{self.lines[src][row]}"
        if locate:
            line = _find_line(input_path, digest, doc_id)
            if line is not None:
                return f"{input_path}:{line}"
        return f"{input_path} (corpus part {part}, row {row + 1})"


def _find_line(path: str, digest: str, doc_id: str) -> int | None:
    """The line of ``doc_id`` in the input file ``path`` if it is still there (None otherwise)."""
    if not locations.is_file(path):
        return None
    stem = os.path.basename(path).split(".")[0]
    try:
        for rec in readers.iter_raw(path, id_prefix=f"{stem}#{digest[:12]}"):
            try:
                if readers.decode_record(rec)["id"] == doc_id:
                    return rec.line
            except readers.RecordError:
                continue
    except (OSError, readers.RecordError):
        return None
    return None


def _existing_index(corpus: Corpus, subset: str, exclude: set[str], meta: dict) -> tuple[idindex.IdIndex, _Sources]:
    """The id index of the subset's registered parts (except ``exclude``), read part by part.

    The index spills to ``work/idindex/`` of the corpus past :data:`xgen_data.sources.idindex.MEMORY_ENTRIES` ids
    (cleared here first: the caller holds the corpus lock), so its memory does not grow with the corpus."""
    spill = os.path.join(corpus.root, "work", "idindex")
    shutil.rmtree(spill, ignore_errors=True)
    index, sources = idindex.IdIndex(spill_dir=spill), _Sources()
    owner = {(v["subset"], name): (v["path"], v.get("sha256", "")) for v in meta.get("inputs", {}).values()
             for name in v["parts"]}
    for part in corpus.parts(subset):
        if part.name in exclude:
            continue
        ids = pq.read_table(part.path, columns=["id"]).column("id")
        src = sources.add(part.path, (*owner.get((subset, part.name), ("?", "")), part.name))
        index.add(idindex.hash_ids(ids), src, np.arange(len(ids), dtype=np.uint32))
    return index, sources


def _dedup_ids(batch: pa.RecordBatch, lines: np.ndarray, index: idindex.IdIndex, sources: _Sources, path: str,
               on_error: str, report: FileReport) -> tuple[np.ndarray, np.ndarray]:
    """``(keep bool[rows], id hashes uint64[rows])``: which documents of ``batch`` have an id not seen before.

    Raises:
        RecordError: a duplicate id with ``on_error="raise"``, naming this ``file:line`` and the first one.
    """
    ids = batch.column("id")
    hashes = idindex.hash_ids(ids)
    keep = np.ones(len(hashes), dtype=bool)
    _, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
    suspect = index.maybe_contains(hashes) | (first[inverse.ravel()] != np.arange(len(hashes)))
    if not suspect.any():
        return keep, hashes
    id_list = ids.to_pylist()
    for i in np.flatnonzero(suspect):
        doc_id = id_list[i]
        first_at = None
        for j in range(i):  # an earlier document of this batch with the same id
            if keep[j] and hashes[j] == hashes[i] and id_list[j] == doc_id:
                first_at = f"{path}:{lines[j]}"
                break
        if first_at is None:
            for src, row in index.candidates(int(hashes[i])):
                if sources.id_at(src, row) == doc_id:  # a hash match is confirmed on the real id
                    first_at = sources.where(src, row, doc_id, locate=on_error == "raise")
                    break
        if first_at is None:
            continue  # a hash collision between different ids: keep the document
        if on_error == "raise":
            raise readers.RecordError(path, int(lines[i]), f"duplicate id {doc_id!r} (first at {first_at}; "
                                                           "use --on-error skip to keep only the first)")
        keep[i] = False
        report.skipped["duplicate_id"] += 1
        if len(report.examples) < 5:
            report.examples.append(f"{path}:{lines[i]}: duplicate id {doc_id!r} (first at {first_at})")
    return keep, hashes


def _write_error(exc: OSError, what: str) -> OSError:
    """``exc`` with the file being written named (a full disk raises ENOSPC without a file name)."""
    hint = "; free disk space and run the ingest again" if exc.errno == errno.ENOSPC else ""
    return OSError(exc.errno, f"cannot write {what}: {exc.strerror or exc}{hint}")


def ingest_file(corpus: Corpus, path: str, subset: str | None = None, pool: cf.Executor | None = None,
                on_error: str = "raise", progress: bool = True, folder: str | None = None,
                columns: tuple[tuple[str, str], ...] = (), metadata_tokens: bool = False) -> FileReport:
    """Ingest one input file into ``corpus`` (see module docstring).

    Args:
        path: a ``.jsonl``, ``.jsonl.gz``, ``.jsonl.zst`` or ``.parquet`` file.
        subset: subset name; default from the file name (:func:`default_subset`).
        pool: tokenizer worker processes (:func:`worker_pool`); None = in this process.
        on_error: ``"raise"`` stops at the first bad record, duplicate id or unreadable stream; ``"skip"`` counts
            and reports them. A truncated ``.gz`` / ``.zst`` stream under ``"skip"`` keeps the records read
            before the break and is counted as ``truncated_stream``, with an example naming the file and the
            line where the stream broke; a corrupt stream or Parquet file (damaged bytes) raises in both modes.
        folder: the folder ``path`` was found in (:func:`find_inputs`); recorded with the relative path.
        columns: ``((field, column), ...)`` for inputs of another schema (:func:`readers.parse_columns`);
            StarCoderData / The Stack Parquet files are recognised without it (:func:`readers.detect_layout`;
            their default subset is ``starcoder``).
        metadata_tokens: prefix each document's tokens with StarCoder's metadata tokens
            (:func:`metadata_token_ids`; ``text`` stays the file's content, ``n_tokens`` counts the prefix); off
            by default. The input is registered under another key, so switching it re-ingests the file.
    Raises:
        RecordError: a bad record or a duplicate id with ``on_error="raise"`` (nothing of this file is kept);
            :class:`readers.StreamError` for a truncated stream (names the file and line), and for a corrupt
            stream or Parquet file in both modes.
        OSError: a part or ``corpus.json`` cannot be written (names it; ENOSPC for a full disk).
        ValueError: unsupported file type or ``on_error`` value; FileNotFoundError.
        InputError: ``path`` is not a regular file (a FIFO, socket, device), or it changed while it was read
            (:meth:`readers.OpenedInput.check_unchanged`; nothing of it is registered).
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    readers.input_format(path)
    with contextlib.closing(readers.open_input(path)) as opened:  # one open file: hashed, then read
        return _ingest_opened(corpus, opened, subset, pool, on_error, progress, folder, columns, metadata_tokens)


def _ingest_opened(corpus: Corpus, opened: readers.OpenedInput, subset: str | None, pool: cf.Executor | None,
                   on_error: str, progress: bool, folder: str | None, columns: tuple[tuple[str, str], ...],
                   metadata_tokens: bool) -> FileReport:
    """:func:`ingest_file` of an input already opened and hashed (:func:`readers.open_input`)."""
    path = opened.path
    layout = readers.detect_layout(path, columns, metadata_tokens, fileobj=opened.file)
    if subset is None and layout is not None and layout.starcoder:
        subset = "starcoder"
    subset = check_name(default_subset(path) if subset is None else subset, "subset")
    rel = locations.relative(path, folder) if folder else None
    report = FileReport(path=path, subset=subset, name=rel or os.path.basename(path))
    t0 = time.time()
    digest = opened.sha256
    meta = corpus.read_meta()
    inputs = meta.setdefault("inputs", {})
    key = f"{subset}:{digest}" + (":metadata-tokens" if metadata_tokens else "")
    abspath = locations.location(path)
    repair: list[tuple[str, str]] = []
    if key in inputs:
        repair = _damaged_parts(corpus, inputs[key])
        if not repair:
            report.status = "unchanged"
            report.n_written = inputs[key]["n_docs"]
            report.parts = inputs[key]["parts"]
            return report
    stem = os.path.basename(path).split(".")[0]
    replaced = [k for k, v in inputs.items() if (v["path"] == abspath and v["subset"] == subset) or k == key]
    old_parts = {p for k in replaced for p in inputs[k]["parts"]}
    index, sources = _existing_index(corpus, subset, old_parts, meta)

    out_dir = corpus.docs_dir(subset)
    os.makedirs(out_dir, exist_ok=True)
    tmp_paths: list[tuple[str, str]] = []
    writer = None
    part_docs = part_bytes = 0

    def close_part() -> None:
        nonlocal writer
        if writer is not None:
            try:
                writer.close()
            except OSError as exc:
                raise _write_error(exc, f"corpus part {tmp_paths[-1][1]} (as {tmp_paths[-1][0]})") from exc
            finally:
                writer = None
                sources.open_src, sources.open_ids = None, []

    broken: list[readers.StreamError] = []  # with on_error="skip": where the file stopped being readable
    # a sequential (JSONL) read hashes what it reads; Parquet is read at random offsets: its fstat is compared
    sequential = readers.input_format(path) != "parquet"
    source = readers.HashingReader(opened.file) if sequential else opened.file

    def records() -> Iterator[readers.RawRecord]:
        try:
            yield from readers.iter_raw(path, id_prefix=f"{stem}#{digest[:12]}", layout=layout, fileobj=source)
        except readers.StreamError as exc:
            if not exc.truncated:  # damaged bytes: what was decoded before the damage cannot be trusted
                raise readers.StreamError(exc.file, exc.line, f"{exc.problem}; nothing of this file was ingested "
                                          "(a corrupt stream stops the ingest even with --on-error skip: records "
                                          "decoded before the damage may be wrong)", exc.truncated) from exc
            if on_error == "raise":
                raise readers.StreamError(exc.file, exc.line, f"{exc.problem}; nothing of this file was ingested "
                                          "(with --on-error skip the records before it are kept)",
                                          exc.truncated) from exc
            broken.append(exc)  # a cut file: the records before it are exact and kept

    bar = _progress(progress, f"ingest {report.name} -> {subset}")
    try:
        for batch, lines, errors in map_bounded(process_batch, _batches(records()),
                                                pool, 2 * (pool._max_workers if pool is not None else 1)):
            for file, line, problem in errors:
                if on_error == "raise":
                    raise readers.RecordError(file, line, problem)
                report.skipped[_problem_kind(problem)] += 1
                if len(report.examples) < 5:
                    report.examples.append(f"{file}:{line}: {problem}")
            report.n_read += len(errors) + (batch.num_rows if batch is not None else 0)
            if batch is None:
                continue
            keep, hashes = _dedup_ids(batch, lines, index, sources, path, on_error, report)
            if not keep.all():
                batch, lines, hashes = batch.filter(pa.array(keep)), lines[keep], hashes[keep]
            if batch.num_rows:
                if writer is None:
                    mark = "-m" if metadata_tokens else ""  # other bytes, other part names (crash safety)
                    final = os.path.join(out_dir, f"{stem}-{digest[:8]}{mark}-{len(tmp_paths):05d}.parquet")
                    tmp_paths.append((fsutil.tmp_name(final), final))
                    try:
                        writer = pq.ParquetWriter(tmp_paths[-1][0], DOC_SCHEMA, compression="zstd")
                    except OSError as exc:
                        raise _write_error(exc, f"corpus part {final} (as {tmp_paths[-1][0]})") from exc
                    sources.open_src = sources.add(tmp_paths[-1][0], (path, digest, os.path.basename(final)), lines=True)
                    part_docs = part_bytes = 0
                try:
                    writer.write_batch(batch, row_group_size=batch.num_rows)
                except OSError as exc:
                    raise _write_error(exc, f"corpus part {tmp_paths[-1][1]} (as {tmp_paths[-1][0]})") from exc
                index.add(hashes, sources.open_src, np.arange(part_docs, part_docs + batch.num_rows, dtype=np.uint32))
                sources.open_ids.append(batch.column("id"))
                sources.lines[sources.open_src].frombytes(lines.astype(np.int64).tobytes())
                nb = int(pa.compute.sum(batch.column("n_bytes")).as_py())
                report.n_written += batch.num_rows
                report.n_tokens += int(pa.compute.sum(batch.column("n_tokens")).as_py())
                report.n_bytes += nb
                part_docs += batch.num_rows
                part_bytes += nb
                if part_docs >= PART_DOCS or part_bytes >= PART_BYTES:
                    close_part()
            bar.update(len(errors) + (batch.num_rows if batch is not None else 0))
        close_part()
        if sequential:
            source.drain()  # the bytes after a truncated stream's break count too
        opened.check_unchanged(source.hexdigest() if sequential else None)
        for exc in broken:  # always listed, whatever the number of skipped records shown before it
            report.skipped["truncated_stream"] += 1
            report.examples.append(f"{exc.file}:{exc.line}: {exc.problem}; the rest of the file is skipped")
    except BaseException:
        with contextlib.suppress(OSError):
            close_part()
        for tmp, _ in tmp_paths:
            if os.path.exists(tmp):
                os.remove(tmp)
        raise
    finally:
        bar.close()
        index.close()
    fsutil.crash_point("ingest.parts_written")
    part_sha256 = {}
    for tmp, final in tmp_paths:
        part_sha256[os.path.basename(final)] = fsutil.sha256_file(tmp)  # hash the bytes that become the part
        os.replace(tmp, final)
        fsutil.crash_point("ingest.part_renamed")
    report.parts = [os.path.basename(final) for _, final in tmp_paths]
    # Register the new parts (the registry is what makes parts visible), then remove replaced ones.
    for k in replaced:
        del inputs[k]
    inputs[key] = {"path": abspath, "subset": subset, "sha256": digest, "n_docs": report.n_written,
                   "n_tokens": report.n_tokens, "skipped": dict(report.skipped), "parts": report.parts,
                   "part_sha256": part_sha256}
    if folder:
        inputs[key].update(folder=locations.location(folder), rel_path=rel)
    try:
        corpus.write_meta(meta)
    except OSError as exc:
        raise _write_error(exc, corpus.meta_path) from exc
    fsutil.crash_point("ingest.registered")
    corpus.remove_unregistered()
    if repair:
        report.status = "repaired"
        report.examples[:0] = [f"{corpus.docs_dir(subset)}/{name}: {problem}; written again from {path}"
                               for name, problem in repair]
    elif any(k != key for k in replaced):
        report.status = "replaced"
    report.seconds = time.time() - t0
    return report


def _progress(enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(desc=desc, unit=" docs", unit_scale=True, disable=None if enabled else True, leave=False)


def ingest(corpus_dir: str, inputs: list[tuple], workers: int = 2, on_error: str = "raise",
           progress: bool = True, columns: tuple[tuple[str, str], ...] = (),
           metadata_tokens: bool = False, executor: str = "local", ray_address: str | None = None
           ) -> list[FileReport]:
    """Ingest inputs into the corpus at ``corpus_dir`` (created if needed).

    Args:
        inputs: ``(path, subset or None)`` or ``(path, subset or None, folder)`` tuples, where ``folder``
            is the folder :func:`find_inputs` found ``path`` in (recorded with the relative path).
        columns: a column mapping for every input (:func:`ingest_file`).
        executor: ``"local"`` (``workers`` processes) or ``"ray"`` (Ray tasks on a local Ray of ``workers``
            CPUs, or on the cluster at ``ray_address``); the parts are the same bytes on both.

    Holds the corpus lock for the whole run and first removes what a crashed run left behind. See
    :func:`ingest_file` for semantics and errors; every input is checked (type, existence, subset name)
    before any is read, and the tokenizer is loaded once here so a bad ``XGEN_GPT2_BPE`` fails clearly.
    """
    root = os.path.abspath(corpus_dir)
    items = [(item[0], item[1], item[2] if len(item) > 2 else None) for item in inputs]
    for path, subset, _ in items:  # check every input before any work
        readers.input_format(path)
        readers.check_regular(path)
        if not locations.is_uri(path) and os.path.abspath(path).startswith(root + os.sep):
            raise InputError(f"{path}: is inside the corpus {corpus_dir}; ingest raw files from elsewhere")
        if subset is not None:
            check_name(subset, "subset")
        elif readers.detect_layout(path) is None or not readers.detect_layout(path).starcoder:
            check_name(default_subset(path), "subset")
    tokenizer.get_encoding()  # a bad XGEN_GPT2_BPE fails here, clearly, not in a worker
    executors.check_executor(executor, ray_address)
    corpus = Corpus(corpus_dir, create=True)
    with corpus.lock():
        corpus.remove_unregistered()  # leftovers of a crashed run
        with worker_pool(workers, executor, ray_address) as pool:
            return [ingest_file(corpus, p, s, pool=pool, on_error=on_error, progress=progress, folder=f,
                                columns=columns, metadata_tokens=metadata_tokens) for p, s, f in items]
