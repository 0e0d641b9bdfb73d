"""Phase 1 of dedup, one work item per docs part: content hashes, MinHash signatures and band hashes.

:func:`signature_part` is the item function (a pure function of its task: the part, the parameters; it writes
only the part's work files under ``work/dedup/``, committed by their SHA-256 file written last);
:func:`part_task` makes the task of one part, :func:`run_signatures` runs the items whose files are not current.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from xgen_data.attributes import minhash
from xgen_data.attributes.dedup.params import BATCH_DOCS, WORK_VERSION, DedupParams
from xgen_data.execute.contract import Executor, ItemResult, StepReport, WorkItem, run_step
from xgen_data.store import fsutil


def part_task(part, work: str, params: DedupParams) -> dict:
    """The :func:`signature_part` task of one docs part (work file paths, parameters, the part's identity)."""
    st = os.stat(part.path)
    return {"docs": part.path, "size": st.st_size, "sig": os.path.join(work, "sig", part.subset, part.name),
            "bands": os.path.join(work, "bands", part.subset, part.name), "params": params.__dict__,
            "part_key": {"subset": part.subset, "name": part.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}}


def _meta_key(path: str) -> str | None:
    try:
        md = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowInvalid):
        return None
    v = md.get(b"xgen_dedup_key")
    return v.decode() if v is not None else None


def _sig_schema(key: str) -> pa.Schema:
    return pa.schema([("row", pa.int32()), ("chash", pa.binary(16)), ("n_words", pa.int32())],
                     metadata={"xgen_dedup_key": key})


BAND_SCHEMA_FIELDS = [("band", pa.int16()), ("bhash", pa.int64()), ("row", pa.int32())]


def sig_array_path(sig_path: str) -> str:
    """The signature matrix of a part's work file ``sig/<subset>/<part>.parquet``: ``….sig.npy`` beside it."""
    return sig_path[: -len(".parquet")] + ".sig.npy" if sig_path.endswith(".parquet") else sig_path + ".sig.npy"


def _write_bands(path: str, key: str, sig: np.ndarray, has: np.ndarray, bands: int, rows: int) -> None:
    """Band hashes of the part's documents with words, band-major: row group ``i`` holds band ``i``.

    ``sig`` is the part's whole signature matrix (a memory map): hashed in slices of 4,096 documents, so the
    worker holds ``n_docs × bands`` int64 (one part, at most :data:`xgen_data.sources.ingest.PART_DOCS` documents).
    """
    idx = np.flatnonzero(has).astype(np.int32)
    bh = np.empty((len(idx), bands), dtype=np.uint64)
    for s in range(0, len(idx), 4096):
        bh[s:s + 4096] = minhash.band_hashes(np.asarray(sig[idx[s:s + 4096]]), bands, rows)
    schema = pa.schema(BAND_SCHEMA_FIELDS, metadata={"xgen_dedup_key": key})
    with fsutil.atomic_path(path) as tmp:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as w:
            for i in range(bands):
                w.write_table(pa.table([pa.array(np.full(len(idx), i, np.int16)),
                                        pa.array(np.ascontiguousarray(bh[:, i]).view(np.int64)), pa.array(idx)],
                                       schema=schema), row_group_size=max(1, len(idx)))


def _sums_path(sig_path: str) -> str:
    """The SHA-256s of a part's work files (``sig``, ``npy``, ``bands``): ``<sig>.sha256.json``, written last."""
    return sig_path + ".sha256.json"


def _work_files(task: dict, near: bool) -> dict[str, str]:
    files = {"sig": task["sig"]}
    if near:
        files.update(npy=sig_array_path(task["sig"]), bands=task["bands"])
    return files


def _sums_match(task: dict, names: tuple[str, ...]) -> bool:
    """Whether the work files ``names`` of ``task`` exist and match the SHA-256s recorded when they were
    written (a damaged or edited cache file is recomputed, never trusted)."""
    try:
        sums = fsutil.read_json(_sums_path(task["sig"]))
    except (OSError, ValueError):
        return False
    files = _work_files(task, True)
    return all(os.path.exists(files[n]) and sums.get(n) == fsutil.sha256_file(files[n]) for n in names)


def _write_sums(task: dict, near: bool) -> None:
    files = _work_files(task, near)
    fsutil.write_json(_sums_path(task["sig"]), {n: fsutil.sha256_file(f) for n, f in files.items()
                                               if os.path.exists(f)})


def _cached(task: dict) -> tuple[bool, bool]:
    """``(signatures current, band hashes current)`` for a :func:`signature_part` task, from the work files'
    recorded keys (and the signature matrix's presence for a near run) and their recorded SHA-256s."""
    p = DedupParams(**task["params"])
    sig_key = json.dumps({**p.sig_key(), "part": task["part_key"]}, sort_keys=True)
    band_key = json.dumps({"sig": sig_key, "bands": p.bands, "rows": p.rows}, sort_keys=True)
    cached = _meta_key(task["sig"])
    if p.near or cached is None:
        sig_ok = cached == sig_key and (not p.near or os.path.exists(sig_array_path(task["sig"])))
    else:  # exact only needs content hashes, which any cached file of this part and work version has
        c = json.loads(cached)
        sig_ok = c.get("version") == WORK_VERSION and c.get("part") == task["part_key"]
    sig_ok = sig_ok and _sums_match(task, ("sig", "npy") if p.near else ("sig",))
    bands_ok = not p.near or (sig_ok and _meta_key(task["bands"]) == band_key and _sums_match(task, ("bands",)))
    return sig_ok, bands_ok


def signature_part(task: dict) -> dict:
    """Worker: content hashes, MinHash signatures and band hashes of one docs part, to the work files.

    Args:
        task: ``docs`` (docs part path), ``sig`` / ``bands`` (output paths), ``params`` (a
            :class:`DedupParams` as dict), ``part_key`` (identity of the docs part: name, size, mtime).
    Writes:
        ``sig`` (Parquet ``row, chash, n_words``, the cache key in its metadata, written last: it commits the
        part's work files), :func:`sig_array_path` (``.npy`` matrix ``(n_docs, num_perm)`` of the scheme's
        dtype, rows of documents without words all :func:`~xgen_data.attributes.minhash.empty_value`; near runs only) and
        ``bands`` (band-major, see :func:`_write_bands`; near runs only).
    Returns:
        ``{"docs": n, "bytes": text bytes, "reused": bool, "seconds": s, "cpu_seconds": s}``. Signatures are
        recomputed only when the part or a signature parameter changed; band hashes when those or
        ``bands``/``rows`` changed.
    """
    t0, c0 = time.time(), time.process_time()
    p = DedupParams(**task["params"])
    sig_key = json.dumps({**p.sig_key(), "part": task["part_key"]}, sort_keys=True)
    band_key = json.dumps({"sig": sig_key, "bands": p.bands, "rows": p.rows}, sort_keys=True)
    stats = {"docs": 0, "bytes": 0, "reused": False, "seconds": 0.0, "cpu_seconds": 0.0}
    sig_ok, bands_ok = _cached(task)
    stats["reused"] = sig_ok
    if not sig_ok:
        pf = pq.ParquetFile(task["docs"])
        n_rows = pf.metadata.num_rows
        schema = _sig_schema(sig_key)
        hasher = minhash.MinHasher(p.num_perm, p.seed, p.ngram, p.scheme) if p.near else None
        npy = sig_array_path(task["sig"])
        os.makedirs(os.path.dirname(npy), exist_ok=True)
        with contextlib.ExitStack() as stack:
            mat = None
            if p.near:
                mat = np.lib.format.open_memmap(stack.enter_context(fsutil.atomic_path(npy)), mode="w+",
                                                dtype=minhash.sig_dtype(p.scheme), shape=(n_rows, p.num_perm))
            with fsutil.atomic_path(task["sig"]) as sig_tmp:
                with pq.ParquetWriter(sig_tmp, schema, compression="zstd") as swriter:
                    row0 = 0
                    for batch in pf.iter_batches(batch_size=BATCH_DOCS, columns=["text", "n_bytes"]):
                        texts = [minhash.nfc(t) if t else "" for t in batch.column("text").to_pylist()]
                        n = len(texts)
                        chash = pa.array([minhash.content_hash_nfc(t) for t in texts], pa.binary(16))
                        if p.near:
                            sig, n_words = hasher.signatures(texts, nfc_done=True)  # NFC once, for both hashes
                            mat[row0:row0 + n] = sig
                            nw = pa.array(n_words)
                        else:
                            nw = pa.nulls(n, pa.int32())
                        swriter.write_batch(pa.RecordBatch.from_arrays(
                            [pa.array(np.arange(row0, row0 + n, dtype=np.int32)), chash, nw], schema=schema))
                        stats["docs"] += n
                        stats["bytes"] += int(pa.compute.sum(batch.column("n_bytes")).as_py() or 0)
                        row0 += n
                if mat is not None:
                    mat.flush()
                    stack.close()  # the matrix is in place before the Parquet file that commits it
        bands_ok = False
    else:
        stats["docs"] = pq.ParquetFile(task["sig"]).metadata.num_rows
    if p.near and not bands_ok:
        has = pq.read_table(task["sig"], columns=["n_words"]).column("n_words").to_numpy() > 0
        _write_bands(task["bands"], band_key, np.load(sig_array_path(task["sig"]), mmap_mode="r"), has,
                     p.bands, p.rows)
    if not (sig_ok and bands_ok):
        _write_sums(task, p.near)  # last: files written before a crash are not trusted without it
    stats["seconds"], stats["cpu_seconds"] = time.time() - t0, time.process_time() - c0
    return stats


def tasks_left(tasks: list[dict]) -> list[int]:
    """Indices of the tasks whose work files are not current (:func:`_cached`), largest part first."""
    return sorted((i for i, t in enumerate(tasks) if not all(_cached(t))), key=lambda i: -tasks[i]["size"])


def signature_item(task: dict) -> ItemResult:
    """The work item of one part: :func:`signature_part`, its stats as the value."""
    stats = signature_part(task)
    return ItemResult(task["sig"], value=stats, documents=stats["docs"], bytes=stats["bytes"],
                      seconds=stats["seconds"])


@dataclass
class SignatureStep:
    """Phase 1 as a step: one item per part whose work files are not current, largest part first (so the
    longest items start first on a pool); each item commits its own work files (their SHA-256 file, written
    last), so :meth:`commit` only gathers the stats into ``stats``, in ``tasks`` order (current parts as
    reused), and returns the step's report."""

    tasks: list[dict]
    name: str = "dedup signatures"
    item_fn: Callable[..., ItemResult] = signature_item
    started: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        self.todo = tasks_left(self.tasks)
        self.stats: list[dict] = []

    def items(self) -> list[WorkItem]:
        return [WorkItem(f"part {self.tasks[i]['part_key']['subset']}/{self.tasks[i]['part_key']['name']}",
                         (self.tasks[i],)) for i in self.todo]

    def commit(self, results: list[ItemResult]) -> StepReport:
        out: list[dict | None] = [None] * len(self.tasks)
        for i, r in zip(self.todo, results):
            out[i] = r.value
        for i, task in enumerate(self.tasks):
            if out[i] is None:
                out[i] = {"docs": pq.ParquetFile(task["sig"]).metadata.num_rows, "bytes": 0, "reused": True,
                          "seconds": 0.0, "cpu_seconds": 0.0}
        self.stats = out  # type: ignore[assignment]
        return StepReport.of(self.name, results, time.time() - self.started)


def run_signatures(tasks: list[dict], executor: Executor, progress: bool,
                   reports: list[StepReport] | None = None) -> list[dict]:
    """Run the :class:`SignatureStep` of ``tasks`` on ``executor``; returns each task's stats
    (:func:`signature_part`) and appends the step's report to ``reports`` when given."""
    step = SignatureStep(tasks)
    with tqdm(total=len(step.todo), unit="part", desc="dedup signatures", disable=None if progress else True,
              leave=False) as bar:
        step_report = run_step(step, executor, lambda r: bar.update(1))
    if reports is not None:
        reports.append(step_report)
    return step.stats
