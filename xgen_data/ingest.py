"""``xgen ingest``: raw JSONL / JSONL.gz / JSONL.zst / Parquet files into a tokenized Parquet corpus.

The main process streams raw lines from disk in batches; worker processes decode JSON, validate
records (:func:`xgen_data.readers.decode_record`) and tokenize them in data mode (SPEC §1); the main
process writes zstd Parquet parts. At most ``2 × workers`` batches are in flight, so memory does not grow
with corpus size. Parts are written under temporary names and renamed once the whole input file is done;
``corpus.json`` is updated last, so a crash never leaves a half-ingested file visible.

Each part's SHA-256 is recorded in ``corpus.json`` as ``inputs[key]["part_sha256"] = {part_name: hex}``
(hashed from the temporary file just before its rename), so later readers can detect a damaged part.

Re-running is idempotent: an input file whose SHA-256 was already ingested into the subset is skipped; a
file ingested before under the same path with other content replaces its old parts; a document whose id
already exists in the subset (from another file) is skipped and counted as ``duplicate_id``.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import itertools
import multiprocessing
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq

from xgen_data import fsutil, readers, tokenizer
from xgen_data.corpus import DOC_SCHEMA, Corpus, check_name

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
    status: str = "ingested"  # ingested | unchanged | replaced
    n_read: int = 0
    n_written: int = 0
    n_tokens: int = 0
    n_bytes: int = 0
    skipped: collections.Counter = field(default_factory=collections.Counter)
    examples: list[str] = field(default_factory=list)  # first few skipped records, "file:line: problem"
    parts: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _problem_kind(problem: str) -> str:
    for kind in ("malformed JSON", "invalid UTF-8", "missing 'text'"):
        if problem.startswith(kind) or kind in problem:
            return kind.replace("'", "").replace(" ", "_").lower()
    return "invalid_record"


def process_batch(raw: list[readers.RawRecord]) -> tuple[pa.RecordBatch | None, list[tuple[str, int, str]]]:
    """Decode, validate and tokenize one batch of raw records (runs in a worker process).

    Returns:
        ``(batch, errors)``: a RecordBatch with :data:`DOC_SCHEMA` (None when every record failed) and
        ``(file, line, problem)`` for each record that failed validation.
    """
    docs, errors = [], []
    for rec in raw:
        try:
            docs.append(readers.decode_record(rec))
        except readers.RecordError as exc:
            errors.append((exc.file, exc.line, exc.problem))
    if not docs:
        return None, errors
    texts = [d["text"] for d in docs]
    flat, lengths = tokenizer.encode_to_arrays(texts)
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
    return pa.RecordBatch.from_arrays([cols[f.name] for f in DOC_SCHEMA], schema=DOC_SCHEMA), errors


def _batches(records: Iterable[readers.RawRecord]) -> Iterator[list[readers.RawRecord]]:
    batch, size = [], 0
    for rec in records:
        batch.append(rec)
        size += len(rec.payload) if isinstance(rec.payload, bytes) else len(str(rec.payload.get("text", "")))
        if len(batch) >= BATCH_DOCS or size >= BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _init_worker() -> None:
    fsutil.exit_with_parent()
    tokenizer.get_encoding()  # load ranks once per worker


@contextlib.contextmanager
def worker_pool(workers: int) -> Iterator[cf.ProcessPoolExecutor | None]:
    """A process pool of ``workers`` tokenizer processes (None when ``workers <= 1``: run in-process).

    Workers are started with ``spawn`` (safe whatever threads the parent runs) and load the tokenizer
    once; reuse one pool across input files.
    """
    if workers <= 1:
        yield None
        return
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker) as pool:
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


def _existing_ids(corpus: Corpus, subset: str, exclude: set[str]) -> set[str]:
    ids: set[str] = set()
    for part in corpus.parts(subset):
        if part.name not in exclude:
            ids.update(pq.read_table(part.path, columns=["id"]).column("id").to_pylist())
    return ids


def ingest_file(corpus: Corpus, path: str, subset: str | None = None, pool: cf.Executor | None = None,
                on_error: str = "raise", progress: bool = True) -> FileReport:
    """Ingest one input file into ``corpus`` (see module docstring).

    Args:
        path: a ``.jsonl``, ``.jsonl.gz``, ``.jsonl.zst`` or ``.parquet`` file.
        subset: subset name; default from the file name (:func:`default_subset`).
        pool: tokenizer worker processes (:func:`worker_pool`); None = in this process.
        on_error: ``"raise"`` stops at the first bad record; ``"skip"`` counts and reports bad records.
    Raises:
        RecordError: a bad record with ``on_error="raise"`` (nothing of this file is kept).
        ValueError: unsupported file type or ``on_error`` value; FileNotFoundError.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    readers.input_format(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such input file")
    subset = check_name(default_subset(path) if subset is None else subset, "subset")
    report = FileReport(path=path, subset=subset)
    t0 = time.time()
    digest = fsutil.sha256_file(path)
    meta = corpus.read_meta()
    inputs = meta.setdefault("inputs", {})
    key = f"{subset}:{digest}"
    if key in inputs:
        report.status = "unchanged"
        report.n_written = inputs[key]["n_docs"]
        report.parts = inputs[key]["parts"]
        return report
    abspath = os.path.abspath(path)
    stem = os.path.basename(path).split(".")[0]
    replaced = [k for k, v in inputs.items() if v["path"] == abspath and v["subset"] == subset]
    old_parts = {p for k in replaced for p in inputs[k]["parts"]}
    seen_ids = _existing_ids(corpus, subset, old_parts)

    out_dir = corpus.docs_dir(subset)
    os.makedirs(out_dir, exist_ok=True)
    tmp_paths: list[tuple[str, str]] = []
    writer = None
    part_docs = part_bytes = 0

    def close_part() -> None:
        nonlocal writer
        if writer is not None:
            writer.close()
            writer = None

    bar = _progress(progress, f"ingest {os.path.basename(path)} -> {subset}")
    try:
        for batch, errors in map_bounded(process_batch, _batches(readers.iter_raw(path, id_prefix=f"{stem}#{digest[:12]}")), pool,
                                          2 * (pool._max_workers if pool is not None else 1)):
            for file, line, problem in errors:
                if on_error == "raise":
                    raise readers.RecordError(file, line, problem)
                report.skipped[_problem_kind(problem)] += 1
                if len(report.examples) < 5:
                    report.examples.append(f"{file}:{line}: {problem}")
            report.n_read += len(errors) + (batch.num_rows if batch is not None else 0)
            if batch is None:
                continue
            ids = batch.column("id").to_pylist()
            keep = np.ones(len(ids), dtype=bool)
            for i, doc_id in enumerate(ids):
                if doc_id in seen_ids:
                    keep[i] = False
                    report.skipped["duplicate_id"] += 1
                    if len(report.examples) < 5:
                        report.examples.append(f"{path}: id {doc_id!r}: duplicate_id (already in subset {subset!r})")
                else:
                    seen_ids.add(doc_id)
            if not keep.all():
                batch = batch.filter(pa.array(keep))
            if batch.num_rows:
                if writer is None:
                    final = os.path.join(out_dir, f"{stem}-{digest[:8]}-{len(tmp_paths):05d}.parquet")
                    tmp_paths.append((fsutil.tmp_name(final), final))
                    writer = pq.ParquetWriter(tmp_paths[-1][0], DOC_SCHEMA, compression="zstd")
                    part_docs = part_bytes = 0
                writer.write_batch(batch, row_group_size=batch.num_rows)
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
    except BaseException:
        close_part()
        for tmp, _ in tmp_paths:
            if os.path.exists(tmp):
                os.remove(tmp)
        raise
    finally:
        bar.close()
    part_sha256 = {}
    for tmp, final in tmp_paths:
        part_sha256[os.path.basename(final)] = fsutil.sha256_file(tmp)  # hash the bytes that become the part
        os.replace(tmp, final)
    report.parts = [os.path.basename(final) for _, final in tmp_paths]
    # Register the new parts (the registry is what makes parts visible), then remove replaced ones.
    for k in replaced:
        del inputs[k]
    inputs[key] = {"path": abspath, "subset": subset, "sha256": digest, "n_docs": report.n_written,
                   "n_tokens": report.n_tokens, "skipped": dict(report.skipped), "parts": report.parts,
                   "part_sha256": part_sha256}
    corpus.write_meta(meta)
    corpus.remove_unregistered()
    if replaced:
        report.status = "replaced"
    report.seconds = time.time() - t0
    return report


def _progress(enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(desc=desc, unit=" docs", unit_scale=True, disable=None if enabled else True, leave=False)


def ingest(corpus_dir: str, inputs: list[tuple[str, str | None]], workers: int = 2, on_error: str = "raise",
           progress: bool = True) -> list[FileReport]:
    """Ingest ``(path, subset or None)`` inputs into the corpus at ``corpus_dir`` (created if needed).

    Holds the corpus lock for the whole run and first removes what a crashed run left behind. See
    :func:`ingest_file` for semantics and errors; every input is checked (type, existence, subset name)
    before any is read, and the tokenizer is loaded once here so a bad ``XGEN_GPT2_BPE`` fails clearly.
    """
    root = os.path.abspath(corpus_dir)
    for path, subset in inputs:  # check every input before any work
        readers.input_format(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such input file")
        if os.path.abspath(path).startswith(root + os.sep):
            raise ValueError(f"{path}: is inside the corpus {corpus_dir}; ingest raw files from elsewhere")
        check_name(default_subset(path) if subset is None else subset, "subset")
    tokenizer.get_encoding()  # a bad XGEN_GPT2_BPE fails here, clearly, not in a worker
    corpus = Corpus(corpus_dir, create=True)
    with corpus.lock():
        corpus.remove_unregistered()  # leftovers of a crashed run
        with worker_pool(workers) as pool:
            return [ingest_file(corpus, p, s, pool=pool, on_error=on_error, progress=progress) for p, s in inputs]
