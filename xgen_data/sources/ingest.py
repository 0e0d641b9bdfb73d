"""``xgen ingest``: raw JSONL / JSONL.gz / JSONL.zst / Parquet files into a tokenized Parquet corpus.

Ingest is a step on the step contract (:mod:`xgen_data.execute.contract`), run by any executor
(:func:`xgen_data.execute.executors.make_executor`: local processes or Ray). Its work items are the input
files: :func:`xgen_data.sources.ingest_item.tokenize_file` opens one input, hashes it, decodes, validates and
tokenizes its records in data mode (SPEC §1) and writes them, batch by batch, to a temporary batch file in the
corpus's ``work/ingest/`` folder. Items share nothing, so they run in any order and process. The commit
(:meth:`IngestStep.commit_file`) takes the items' results in input order, as each is ready, and does what
depends on the files before: it replays the batches through the duplicate-id check, writes the zstd Parquet
parts under temporary names, renames them once the whole input file is done and updates ``corpus.json``
last, one registry write per input, so a crash never leaves a half-ingested file visible and a killed run
redoes only the inputs not yet registered. The parts are the same bytes whatever executor, worker count or
item order ran it.

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
other content replaces its old parts (``replaced``). An input holding no record (0 bytes, blank lines only, a
Parquet file of no rows) is an :class:`~xgen_data.errors.InputError` naming it; with ``on_error="skip"`` it is
counted as ``empty_file``, listed, and not registered (status ``skipped``). A 0-byte ``.gz`` / ``.zst`` holds
not even one member: a truncated stream (below).

Every record needs an ``id``: one without is a bad record (``missing 'id'``, naming file and line) unless
``id_from`` says how to make one (:data:`readers.ID_FROM`: ``line``, the file's name and content hash and the
line; ``sha256``, the text's SHA-256). Document ids are unique within a subset. A document whose id is already in the subset (from an earlier
input, or earlier in the same file) is an error naming both places (``file:line``) with
``on_error="raise"``, and is skipped and counted as ``duplicate_id`` with ``on_error="skip"``. The check
keeps 64-bit id hashes (:mod:`xgen_data.sources.idindex`, 16 bytes per known document, recomputed from the parts
at each input's commit, in memory up to 2^20 ids and in sorted runs on disk beyond) and confirms every hash
match on the real id, so a hash collision never drops a document.

A truncated ``.gz`` / ``.zst`` stream (a cut file) is a :class:`readers.StreamError` naming the file and the
line where the stream broke with ``on_error="raise"`` (nothing of that file is registered); with
``on_error="skip"`` the records before the break (exact: a cut stream decodes correctly up to the cut) are
kept, the break is counted as ``truncated_stream`` and listed with its line in the report, and the next file
is read. A corrupt stream or Parquet file (damaged bytes) stops the ingest in both modes: what was decoded
before the damage was detected may be wrong. With ``on_error="raise"`` the first problem in a file's order
is raised (a bad record, a duplicate id, a broken stream), the inputs before it staying registered.
"""
from __future__ import annotations

import array
import collections
import contextlib
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
from xgen_data.errors import InputError, XgenError
from xgen_data.execute import executors
from xgen_data.execute.contract import Executor, ItemError, ItemResult, WorkItem
from xgen_data.sources import idindex, locations, readers
from xgen_data.sources.ingest_item import (  # noqa: F401
    SUBSET_BY_STEM,
    BatchInfo,
    FileTokens,
    damaged_parts,
    default_subset,
    metadata_token_ids,
    part_prefix,
    process_batch,
    tokenize_file,
    write_error,
)
from xgen_data.store import fsutil
from xgen_data.store.corpus import DOC_SCHEMA, Corpus, check_name

#: A batch (one row group) holds at most this many records, or this many payload bytes.
BATCH_DOCS = 256
BATCH_BYTES = 4 << 20
#: A part is closed once it holds this many documents or text bytes.
PART_DOCS = 16384
PART_BYTES = 48 << 20
#: An input is split into one item per this many bytes of it (at most the executor's workers).
SLICE_BYTES = 1 << 20


@dataclass
class FileReport:
    """What ingesting one input file did (counts are documents)."""

    path: str
    subset: str
    status: str = "ingested"  # ingested | unchanged | replaced | repaired | skipped (an input with no record)
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


def work_dir(corpus: Corpus) -> str:
    """The folder of ingest's batch files (items write, the commit reads and removes; emptied at each run)."""
    return os.path.join(corpus.root, "work", "ingest")


class _PartWriter:
    """The parts of one input being written: zstd Parquet under temporary names in ``out_dir``, a new part once
    the open one holds :data:`PART_DOCS` documents or :data:`PART_BYTES` text bytes; registers each written
    batch's ids in the duplicate-id index as it goes."""

    def __init__(self, out_dir: str, prefix: str, tokens: FileTokens, index: idindex.IdIndex,
                 sources: _Sources) -> None:
        self.out_dir, self.prefix, self.tokens, self.index, self.sources = out_dir, prefix, tokens, index, sources
        self.tmp_paths: list[tuple[str, str]] = []
        self.writer: pq.ParquetWriter | None = None
        self.docs = self.bytes = 0

    def _what(self) -> str:
        return f"corpus part {self.tmp_paths[-1][1]} (as {self.tmp_paths[-1][0]})"

    def _open(self) -> None:
        final = os.path.join(self.out_dir, f"{self.prefix}-{len(self.tmp_paths):05d}.parquet")
        self.tmp_paths.append((fsutil.tmp_name(final), final))
        try:
            self.writer = pq.ParquetWriter(self.tmp_paths[-1][0], DOC_SCHEMA, compression="zstd")
        except OSError as exc:
            raise write_error(exc, self._what()) from exc
        origin = (self.tokens.path, self.tokens.digest, os.path.basename(final))
        self.sources.open_src = self.sources.add(self.tmp_paths[-1][0], origin, lines=True)
        self.docs = self.bytes = 0

    def write(self, batch: pa.RecordBatch, lines: np.ndarray, hashes: np.ndarray, report: FileReport) -> None:
        """Append ``batch`` (one row group) with its input ``lines`` and id ``hashes``; count it in ``report``."""
        if self.writer is None:
            self._open()
        try:
            self.writer.write_batch(batch, row_group_size=batch.num_rows)
        except OSError as exc:
            raise write_error(exc, self._what()) from exc
        src = self.sources.open_src
        self.index.add(hashes, src, np.arange(self.docs, self.docs + batch.num_rows, dtype=np.uint32))
        self.sources.open_ids.append(batch.column("id"))
        self.sources.lines[src].frombytes(lines.astype(np.int64).tobytes())
        nb = int(pa.compute.sum(batch.column("n_bytes")).as_py())
        report.n_written += batch.num_rows
        report.n_tokens += int(pa.compute.sum(batch.column("n_tokens")).as_py())
        report.n_bytes += nb
        self.docs += batch.num_rows
        self.bytes += nb
        if self.docs >= PART_DOCS or self.bytes >= PART_BYTES:
            self.close()

    def close(self) -> None:
        if self.writer is not None:
            try:
                self.writer.close()
            except OSError as exc:
                raise write_error(exc, self._what()) from exc
            finally:
                self.writer = None
                self.sources.open_src, self.sources.open_ids = None, []

    def abort(self) -> None:
        """Close and delete every temporary part (an error: nothing of the input is kept)."""
        with contextlib.suppress(OSError):
            self.close()
        for tmp, _ in self.tmp_paths:
            if os.path.exists(tmp):
                os.remove(tmp)


def _count_errors(info, report: FileReport, on_error: str) -> None:
    """Count one batch's failed records in ``report`` (raise the first with ``on_error="raise"``)."""
    if info.shown and on_error == "raise":
        raise readers.RecordError(*info.shown[0])
    report.skipped.update(info.kinds)
    for file, line, problem in info.shown:
        if len(report.examples) < 5:
            report.examples.append(f"{file}:{line}: {problem}")


def _batch_of(table: pa.Table) -> tuple[pa.RecordBatch, np.ndarray]:
    """A batch file's row group as ``(documents with DOC_SCHEMA, int64 input lines)``."""
    batch = pa.RecordBatch.from_arrays([table.column(f.name).combine_chunks() for f in DOC_SCHEMA], schema=DOC_SCHEMA)
    return batch, table.column("line").to_numpy()


def _interleaved(slices: list[FileTokens]) -> Iterator[tuple[FileTokens, BatchInfo, int]]:
    """The input's batches in file order, ``(slice, batch, its row group or -1)``: batch ``j`` is batch
    ``j // of`` of slice ``j % of``; ends where a slice has no next batch (the file's end, or where an item
    stopped at the error the commit raises)."""
    groups = [0] * len(slices)
    j = 0
    while j // len(slices) < len(slices[j % len(slices)].batches):
        k = j % len(slices)
        info = slices[k].batches[j // len(slices)]
        yield slices[k], info, groups[k] if info.rows else -1
        groups[k] += 1 if info.rows else 0
        j += 1


def _replay(slices: list[FileTokens], parts: _PartWriter, on_error: str, report: FileReport, bar) -> None:
    """Run the input's batches, in file order, through the duplicate-id check into ``parts``."""
    with contextlib.ExitStack() as stack:
        files = [stack.enter_context(pq.ParquetFile(t.batch_file)) if any(b.rows for b in t.batches) else None
                 for t in slices]
        for tokens, info, group in _interleaved(slices):
            _count_errors(info, report, on_error)
            report.n_read += sum(info.kinds.values()) + info.rows
            if group >= 0:
                batch, lines = _batch_of(files[tokens.part].read_row_group(group))
                keep, hashes = _dedup_ids(batch, lines, parts.index, parts.sources, tokens.path, on_error, report)
                if not keep.all():
                    batch, lines, hashes = batch.filter(pa.array(keep)), lines[keep], hashes[keep]
                if batch.num_rows:
                    parts.write(batch, lines, hashes, report)
            bar.update(sum(info.kinds.values()) + info.rows)


def _end_of_stream(slices: list[FileTokens], on_error: str, report: FileReport) -> None:
    """Raise or list where the input's stream broke (see the module docstring)."""
    broken = next((t.broken for t in slices if t.broken is not None), None)
    if broken is None:
        return
    note = readers.past_broken_stream(readers.StreamError(*broken), on_error, "ingested")
    report.skipped["truncated_stream"] += 1  # a cut file: the records before it are exact and kept
    report.examples.append(note)


def _holds_no_record(slices: list[FileTokens]) -> bool:
    """Whether the input was read to its end (no broken stream) and held no record, good or bad: a 0-byte
    file, one of blank lines only, a Parquet file of no rows."""
    return all(t.broken is None and not any(b.rows or b.kinds for b in t.batches) for t in slices)


def _skip_empty(path: str, on_error: str, report: FileReport) -> None:
    """An input with no record is an error (most often a cut download or a wrong file, never a useful input);
    with ``on_error="skip"`` it is counted as ``empty_file``, listed, and not registered (status ``skipped``).

    Raises:
        InputError: with ``on_error="raise"``, naming the file.
    """
    problem = f"{path}: holds no record (an empty file, or blank lines only); nothing of it was ingested"
    if on_error != "skip":
        raise InputError(f"{problem} (check the file, or use --on-error skip to go on without it)")
    report.status = "skipped"
    report.skipped["empty_file"] += 1
    report.examples.append(problem)


def _progress(enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(desc=desc, unit=" docs", unit_scale=True, disable=None if enabled else True, leave=False)


@dataclass
class IngestStep:
    """Ingest as a step (:mod:`xgen_data.execute.contract`): one item per input file, committed one input at a
    time in input order (:meth:`commit_file`). Create and run it under the corpus lock.

    ``inputs`` are ``(path, subset or None, folder or None)``; ``max_slices``: the most items one input is
    split into (:meth:`slices`; :func:`ingest` uses its workers); the other fields are :func:`ingest`'s.
    """

    corpus: Corpus
    inputs: list[tuple[str, str | None, str | None]]
    on_error: str = "raise"
    progress: bool = True
    columns: tuple[tuple[str, str], ...] = ()
    metadata_tokens: bool = False
    max_slices: int = 1
    id_from: str | None = None
    name: str = "ingest"
    item_fn = staticmethod(tokenize_file)

    def __post_init__(self) -> None:
        self.registered = self.corpus.read_meta().get("inputs", {})  # as the items see it
        self.work_dir = work_dir(self.corpus)
        shutil.rmtree(self.work_dir, ignore_errors=True)  # batch files of a killed run (we hold the lock)
        os.makedirs(self.work_dir)

    def items(self) -> list[WorkItem]:
        """The items of every input, in input order: :meth:`slices` of each (keyed ``input <path>``, with
        `` (batches k mod n)`` when split); each gets the registry entries of its own location."""
        by_path: dict[str, dict] = collections.defaultdict(dict)
        for key, entry in self.registered.items():
            by_path[entry["path"]][key] = entry
        docs_root, out = os.path.join(self.corpus.root, "docs"), []
        for i, (path, subset, _) in enumerate(self.inputs):
            n = self.slices(path)
            for k in range(n):
                out.append(WorkItem(f"input {path}" + (f" (batches {k} mod {n})" if n > 1 else ""),
                                    (path, subset, self.columns, self.metadata_tokens, self.on_error,
                                     by_path.get(locations.location(path), {}), docs_root,
                                     os.path.join(self.work_dir, f"batches-{i:06d}-{k:03d}.parquet"),
                                     BATCH_DOCS, BATCH_BYTES, k, n, self.id_from)))
        return out

    def slices(self, path: str) -> int:
        """How many items read ``path``: one per :data:`SLICE_BYTES` of it, at most ``max_slices`` (the
        parts are the same bytes for any number)."""
        size = locations.input_identity(path).size if locations.is_uri(path) else os.path.getsize(path)
        return max(1, min(self.max_slices, -(-size // SLICE_BYTES)))

    def commit(self, results: list[ItemResult]) -> list[FileReport]:
        """Commit every input, in input order (:meth:`commit_file`), from the results of :meth:`items`."""
        return [self.commit_file(i, group) for i, group in _by_input(results)]

    def commit_file(self, i: int, results: list[ItemResult]) -> FileReport:
        """Make input ``i`` visible (the results of its items): write its parts, register them with one
        registry write, remove the parts it replaces. Inputs must be committed in input order.

        Raises:
            RecordError: a bad record, duplicate id or broken stream with ``on_error="raise"`` (nothing of this
                input is kept); StreamError for a corrupt stream in both modes. OSError: a part or
                ``corpus.json`` cannot be written (names it).
        """
        slices: list[FileTokens] = [r.value for r in results]
        try:
            return self._commit_slices(i, slices, max(r.seconds for r in results))
        finally:
            for t in slices:
                if t.batch_file is not None:
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(t.batch_file)

    def _commit_slices(self, i: int, slices: list[FileTokens], item_seconds: float) -> FileReport:
        t0, first = time.time(), slices[0]
        folder = self.inputs[i][2]
        rel = locations.relative(first.path, folder) if folder else None
        report = FileReport(path=first.path, subset=first.subset, name=rel or os.path.basename(first.path))
        meta = self.corpus.read_meta()
        inputs = meta.setdefault("inputs", {})
        key, repair = first.key, []
        if key in inputs:
            whole = first.intact and inputs[key] == self.registered.get(key)  # checked by the item, unchanged since
            repair = [] if whole else damaged_parts(self.corpus.docs_dir(inputs[key]["subset"]), inputs[key])
            if not repair:
                report.status, report.n_written, report.parts = "unchanged", inputs[key]["n_docs"], inputs[key]["parts"]
                report.seconds = item_seconds + time.time() - t0
                return report
        slices = [self._read_here(t) for t in slices]
        if _holds_no_record(slices):
            _skip_empty(first.path, self.on_error, report)
            report.seconds = item_seconds + time.time() - t0
            return report
        abspath = locations.location(first.path)
        replaced = [k for k, v in inputs.items() if (v["path"] == abspath and v["subset"] == first.subset) or k == key]
        part_sha256 = self._write_parts(slices, {p for k in replaced for p in inputs[k]["parts"]}, meta, report)
        for k in replaced:
            del inputs[k]
        inputs[key] = {"path": abspath, "subset": first.subset, "sha256": first.digest, "n_docs": report.n_written,
                       "n_tokens": report.n_tokens, "skipped": dict(report.skipped), "parts": report.parts,
                       "part_sha256": part_sha256}
        if folder:
            inputs[key].update(folder=locations.location(folder), rel_path=rel)
        self._register(meta)
        if repair:
            report.status = "repaired"
            report.examples[:0] = [f"{self.corpus.docs_dir(first.subset)}/{name}: {problem}; written again from "
                                   f"{first.path}" for name, problem in repair]
        elif any(k != key for k in replaced):
            report.status = "replaced"
        report.seconds = item_seconds + time.time() - t0
        return report

    def _read_here(self, tokens: FileTokens) -> FileTokens:
        """``tokens`` itself, or, for an item that stopped after the hash (its entry was whole when the run
        started, and is damaged or replaced now), the same item run in this process."""
        if tokens.batch_file is not None:
            return tokens
        args = next(it.args for it in self.items() if it.args[0] == tokens.path and it.args[10] == tokens.part)
        return self.item_fn(*args[:5], {}, *args[6:]).value

    def _write_parts(self, slices: list[FileTokens], old_parts: set[str], meta: dict,
                     report: FileReport) -> dict[str, str]:
        """Write the input's parts and rename them into place (unregistered until :meth:`_register`); returns
        their SHA-256 by name, hashed from the temporary files."""
        first = slices[0]
        index, sources = _existing_index(self.corpus, first.subset, old_parts, meta)
        out_dir = self.corpus.docs_dir(first.subset)
        os.makedirs(out_dir, exist_ok=True)
        parts = _PartWriter(out_dir, first.prefix, first, index, sources)
        bar = _progress(self.progress, f"ingest {report.name} -> {first.subset}")
        try:
            _replay(slices, parts, self.on_error, report, bar)
            parts.close()
            _end_of_stream(slices, self.on_error, report)
        except BaseException:
            parts.abort()
            raise
        finally:
            bar.close()
            index.close()
        fsutil.crash_point("ingest.parts_written")
        part_sha256 = {}
        for tmp, final in parts.tmp_paths:
            part_sha256[os.path.basename(final)] = fsutil.sha256_file(tmp)  # hash the bytes that become the part
            os.replace(tmp, final)
            fsutil.crash_point("ingest.part_renamed")
        report.parts = [os.path.basename(final) for _, final in parts.tmp_paths]
        return part_sha256

    def _register(self, meta: dict) -> None:
        """The registry write that makes the new parts visible, then the replaced parts' removal."""
        try:
            self.corpus.write_meta(meta)
        except OSError as exc:
            raise write_error(exc, self.corpus.meta_path) from exc
        fsutil.crash_point("ingest.registered")
        self.corpus.remove_unregistered()


def _by_input(results: Iterable[ItemResult]) -> Iterator[tuple[int, list[ItemResult]]]:
    """``(input index, its items' results)`` from results in item order, each input as soon as its last
    item's result arrives."""
    i, group = 0, []
    for result in results:
        group.append(result)
        if len(group) == result.value.of:
            yield i, group
            i, group = i + 1, []


def run_ingest_step(step: IngestStep, executor: Executor) -> list[FileReport]:
    """Run ``step``'s items on ``executor`` and commit each input as soon as it and every input before it are
    done (a killed run keeps the inputs committed so far; the next run skips them as ``unchanged``).

    Raises:
        The item's own error (a RecordError, InputError or OSError naming the file and record) when an
        item fails with one; :class:`ItemError` naming the input otherwise (e.g. its worker died, retries
        spent). The inputs before it stay committed; nothing of it or after it is.
    """
    reports = []
    try:
        for i, results in _by_input(executor.map(step.name, step.item_fn, step.items())):
            reports.append(step.commit_file(i, results))
    except ItemError as exc:
        if isinstance(exc.__cause__, (XgenError, OSError)):
            raise exc.__cause__ from None
        raise
    finally:
        shutil.rmtree(step.work_dir, ignore_errors=True)  # batch files of items not committed
    return reports


def ingest_file(corpus: Corpus, path: str, subset: str | None = None, on_error: str = "raise",
                progress: bool = True, folder: str | None = None, columns: tuple[tuple[str, str], ...] = (),
                metadata_tokens: bool = False, id_from: str | None = None) -> FileReport:
    """Ingest one input file into ``corpus`` in this process (see the module docstring; call under the corpus lock).

    Args:
        path: a ``.jsonl``, ``.jsonl.gz``, ``.jsonl.zst`` or ``.parquet`` file.
        subset: subset name; default from the file name (:func:`default_subset`).
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
        id_from: how a record without an ``id`` gets one (:data:`readers.ID_FROM`: ``line`` or ``sha256``);
            None (default): such a record is bad (``missing 'id'``, naming file and line). ``sha256`` registers
            the input under another key (``:id-sha256``) and names its parts ``-s``.
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
    _check_id_from(id_from)
    step = IngestStep(corpus, [(path, subset, folder)], on_error, progress, columns, metadata_tokens, id_from=id_from)
    (report,) = run_ingest_step(step, executors.make_executor("local", 1))
    return report


def _check_id_from(id_from: str | None) -> None:
    if id_from is not None and id_from not in readers.ID_FROM:
        raise InputError(f"id_from must be one of {', '.join(readers.ID_FROM)} (or None), not {id_from!r}")


def _check_inputs(root: str, corpus_dir: str, items: list[tuple[str, str | None, str | None]]) -> None:
    """Check every input (type, existence, place, subset name) before any is read."""
    for path, subset, _ in items:
        readers.input_format(path)
        readers.check_regular(path)
        if not locations.is_uri(path) and os.path.abspath(path).startswith(root + os.sep):
            raise InputError(f"{path}: is inside the corpus {corpus_dir}; ingest raw files from elsewhere")
        if subset is not None:
            check_name(subset, "subset")
        elif readers.detect_layout(path) is None or not readers.detect_layout(path).starcoder:
            check_name(default_subset(path), "subset")


def ingest(corpus_dir: str, inputs: list[tuple], workers: int = 2, on_error: str = "raise",
           progress: bool = True, columns: tuple[tuple[str, str], ...] = (),
           metadata_tokens: bool = False, executor: str = "local", ray_address: str | None = None,
           id_from: str | None = None) -> list[FileReport]:
    """Ingest inputs into the corpus at ``corpus_dir`` (created if needed).

    Args:
        inputs: ``(path, subset or None)`` or ``(path, subset or None, folder)`` tuples, where ``folder``
            is the folder :func:`find_inputs` found ``path`` in (recorded with the relative path).
        workers: processes (``local``) or CPUs of the local Ray (``ray``) reading inputs at once.
        columns, id_from: a column mapping for every input, and how records without an id get one
            (:func:`ingest_file`).
        executor: ``"local"`` (``workers`` processes) or ``"ray"`` (Ray tasks on a local Ray of ``workers``
            CPUs, or on the cluster at ``ray_address``); the parts are the same bytes on both.

    Holds the corpus lock for the whole run and first removes what a crashed run left behind. See
    :func:`ingest_file` for semantics and errors; every input is checked (type, existence, subset name)
    before any is read, and the tokenizer is loaded once here so a bad ``XGEN_GPT2_BPE`` fails clearly.
    Returns one :class:`FileReport` per input, in input order.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    _check_id_from(id_from)
    root = os.path.abspath(corpus_dir)
    items = [(item[0], item[1], item[2] if len(item) > 2 else None) for item in inputs]
    _check_inputs(root, corpus_dir, items)
    tokenizer.get_encoding()  # a bad XGEN_GPT2_BPE fails here, clearly, not in a worker
    executors.check_executor(executor, ray_address)
    corpus = Corpus(corpus_dir, create=True)
    with corpus.lock():
        corpus.remove_unregistered()  # leftovers of a crashed run
        step = IngestStep(corpus, items, on_error, progress, columns, metadata_tokens, max_slices=workers,
                          id_from=id_from)
        pool = executors.make_executor(executor, workers, ray_address)
        try:
            return run_ingest_step(step, pool)
        finally:
            pool.close()

