"""Dedup phase 3, LSH bands: candidate pairs per band (NumPy, one band of the corpus in memory), one work item
per group of bands.

Item ``g`` reads bands ``[g × BANDS_PER_ITEM, (g + 1) × BANDS_PER_ITEM)`` of every part (row groups of the
band-major work files) and writes its distinct edges, sorted, as int64 keys ``a × n + b`` (``n`` documents) to
``candidates/<g>.npy``: with ``cliques``, candidate pairs ``a < b`` of exact-group representatives
(:func:`bucket_pairs`); with ``components``, star edges ``(document, smallest document of its bucket)``
(:func:`star_edges`). The commit merges the groups' keys (a set: the same for any grouping and item order)
into the phase's result: for ``cliques``, the pairs cut into verify shards by connected component
(:mod:`.cluster`); for ``components``, the edges themselves (``near_edges.npy``).
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Callable

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from xgen_data.attributes.clusters import compress, union_edges
from xgen_data.attributes.dedup.params import BUCKET_PAIR_CAP, sql_list
from xgen_data.execute.contract import ItemResult, StepReport, WorkItem
from xgen_data.store import fsutil
from xgen_data.store.corpus import Corpus

#: Bands per work item (25 bands at the default threshold: 5 items).
BANDS_PER_ITEM = 5
#: Candidate pairs per verify shard (:mod:`.cluster`), 1 to :data:`MAX_PAIR_SHARDS` shards.
PAIRS_PER_SHARD = 1 << 24
MAX_PAIR_SHARDS = 256


def _buckets(bhash: np.ndarray, doc: np.ndarray):
    """Rows sorted by (band hash, document) and cut into buckets: ``(h, d, new_h, start, size)`` (sorted hashes
    and documents, bool ``new_h`` marking each bucket's first row, each bucket's first row and row count), or
    None for fewer than 2 rows."""
    order = np.lexsort((doc, bhash))
    h, d = bhash[order], doc[order]
    if len(h) < 2:
        return None
    new_h = np.concatenate([[True], h[1:] != h[:-1]])
    start = np.flatnonzero(new_h)
    return h, d, new_h, start, np.diff(np.append(start, len(h)))


def bucket_pairs(bhash: np.ndarray, doc: np.ndarray, cap: int = BUCKET_PAIR_CAP) -> tuple[np.ndarray, np.ndarray, int]:
    """Candidate pairs of one band: documents with equal band hash.

    Args:
        bhash: int64 ``(m,)`` band hashes; doc: int64 ``(m,)`` the document (exact-group representative) of each.
        cap: in a bucket every member is paired with the first ``cap`` members by document number.
    Returns:
        ``(a, b, buckets)``: int64 pairs with ``a < b`` (both members of one bucket, ``a`` among its first
        ``cap`` distinct documents; a pair sharing two buckets appears twice), and the number of buckets
        holding ≥ 2 rows (before distinct documents).
    """
    buckets_of = _buckets(bhash, doc)
    if buckets_of is None:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), 0
    h, d, new_h, run_start, run_len = buckets_of
    buckets = int(np.count_nonzero(run_len > 1))
    keep = new_h | np.concatenate([[True], d[1:] != d[:-1]])  # distinct (bucket, document)
    multi = np.repeat(run_len > 1, run_len)
    keep &= multi
    h, d = h[keep], d[keep]
    if not len(h):
        return np.zeros(0, np.int64), np.zeros(0, np.int64), buckets
    new_h = np.concatenate([[True], h[1:] != h[:-1]])
    start = np.flatnonzero(new_h)
    size = np.diff(np.append(start, len(h)))
    rank = np.arange(len(h)) - np.repeat(start, size)  # position of each member in its bucket
    n_pair = np.minimum(rank, cap)  # member of rank r pairs with ranks 0 .. min(r, cap) - 1
    total = int(n_pair.sum())
    x = np.repeat(np.arange(len(h)), n_pair)
    first = np.repeat(np.cumsum(n_pair) - n_pair, n_pair)
    y = np.repeat(np.repeat(start, size), n_pair) + (np.arange(total) - first)
    return d[y], d[x], buckets


def merge_distinct(key: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Sorted distinct values of ``key`` (sorted, distinct) and ``new`` (any order), int64.

    A stable sort of the concatenation (timsort merges the two sorted runs in linear time), then adjacent
    duplicates dropped; ``np.union1d`` hashes every value again on each call (6.2 of the 9.9 s of the 4×
    growth corpus's candidate pairs, 25 bands).
    """
    new = np.sort(new)
    out = np.concatenate([key, new])
    out.sort(kind="stable")
    if len(out) < 2:
        return out
    return out[np.concatenate([[True], out[1:] != out[:-1]])]


def doc_offsets(corpus: Corpus) -> np.ndarray:
    """Global numbering: int64 shape ``(n_parts + 1,)``; document ``row`` of part ``k`` is ``offsets[k] + row``."""
    counts = [pq.ParquetFile(p.path).metadata.num_rows for p in corpus.parts()]
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return offsets


def candidate_pairs(corpus_dir: str, docs: np.ndarray | None = None) -> np.ndarray:
    """Every LSH candidate pair of the last near-dedup run: documents sharing ≥ 1 ``(band, hash)`` bucket.

    A diagnostic (the run itself only forms star edges per bucket): reads ``work/dedup/bands``, so call it
    after :func:`run_dedup` with ``near=True`` on the same parts.

    Args:
        docs: optional int64 global document numbers to restrict both ends of the pairs to.
    Returns:
        int64 shape ``(m, 2)``, rows ``(a, b)`` with ``a < b`` (a document is never paired with itself),
        distinct, sorted.
    Raises:
        CorpusError: not a corpus; FileNotFoundError: no band files for some part (run dedup first).
    """
    corpus = Corpus(corpus_dir)
    parts = corpus.parts()
    offsets = doc_offsets(corpus)
    files = [os.path.join(corpus.root, "work", "dedup", "bands", p.subset, p.name) for p in parts]
    for f in files:
        if not os.path.exists(f):
            raise FileNotFoundError(f"{f}: no band hashes; run dedup with near=True first")
    if not files:
        return np.zeros((0, 2), dtype=np.int64)
    con = duckdb.connect()
    try:
        con.register("_pofs", pa.table({"f": files, "doff": pa.array(offsets[:-1], pa.int64())}))
        where = ""
        if docs is not None:
            con.register("_only", pa.table({"doc": pa.array(np.asarray(docs, dtype=np.int64))}))
            where = "WHERE doc IN (SELECT doc FROM _only)"
        rows = con.sql(f"""WITH b AS (SELECT * FROM (SELECT r.band, r.bhash, o.doff + r.row AS doc
                FROM read_parquet({sql_list(files)}, filename=true) r JOIN _pofs o ON r.filename = o.f) {where})
            SELECT DISTINCT x.doc AS a, y.doc AS b FROM b x JOIN b y
                ON x.band = y.band AND x.bhash = y.bhash AND x.doc < y.doc ORDER BY a, b""").fetchnumpy()
    finally:
        con.close()
    return np.stack([rows["a"].astype(np.int64), rows["b"].astype(np.int64)], axis=1)


def star_edges(bhash: np.ndarray, doc: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """StarCoder's edges of one band: each document of a bucket of ≥ 2 rows to the bucket's smallest document.

    Args:
        bhash, doc: int64 ``(m,)`` band hashes and their documents (each document at most once in a band).
    Returns:
        ``(doc, rep)`` int64 edges with ``doc > rep``, and the number of buckets holding ≥ 2 rows.
    """
    buckets_of = _buckets(bhash, doc)
    if buckets_of is None:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), 0
    _, d, new_h, start, size = buckets_of
    rep = np.repeat(d[start], size)
    edge = np.repeat(size > 1, size) & ~new_h
    return d[edge], rep[edge], int(np.count_nonzero(size > 1))


def _band_rows(files: list[pq.ParquetFile], offsets: np.ndarray, band: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Band ``band`` of every part: int64 ``(bhash, doc)``, or None when no part has band rows."""
    hs, ds = [], []
    for k, f in enumerate(files):
        if f.metadata.num_rows == 0:
            continue
        t = f.read_row_group(band, columns=["bhash", "row"])
        hs.append(t.column("bhash").to_numpy())
        ds.append(offsets[k] + t.column("row").to_numpy().astype(np.int64))
    return (np.concatenate(hs), np.concatenate(ds)) if hs else None


def band_group(band_paths: list[str], offsets: np.ndarray, exact_path: str, bands: list[int], clustering: str,
               out_path: str) -> ItemResult:
    """The work item of one group of ``bands`` (module docstring): writes ``out_path`` (sorted distinct int64
    edge keys) atomically.

    ``exact_path``: the exact phase's ``exact.npy`` (int64 per document, its exact group's smallest document or
    -1), read through a memory map: with ``cliques`` each document enters a bucket as its group's smallest.
    Returns value ``{"buckets": buckets of ≥ 2 rows over these bands}``; ``documents`` = band rows read.
    """
    t0 = time.time()
    files = [pq.ParquetFile(f) for f in band_paths]
    n = int(offsets[-1])
    gid = np.load(exact_path, mmap_mode="r")
    key, buckets, rows = np.zeros(0, np.int64), 0, 0
    for band in bands:
        got = _band_rows(files, offsets, band)
        if got is None:
            continue
        h, d = got
        rows += len(d)
        if clustering == "cliques":
            g = np.asarray(gid[d])
            a, b, nb = bucket_pairs(h, np.where(g >= 0, g, d))
        else:
            a, b, nb = star_edges(h, d)  # keys doc × n + rep
        buckets += nb
        key = merge_distinct(key, a * n + b)
    with fsutil.atomic_path(out_path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, key)
    return ItemResult(f"bands {bands[0]}-{bands[-1]}", value={"buckets": buckets}, documents=rows,
                      bytes=16 * rows, seconds=time.time() - t0)


def pair_shards(a: np.ndarray, b: np.ndarray, n_shards: int) -> np.ndarray:
    """The verify shard of each pair ``(a[i], b[i])``: the smallest document of its connected component of the
    candidate graph, mod ``n_shards`` (int64 ``(m,)``), so a component never spans two shards."""
    nodes = np.unique(np.concatenate([a, b]))
    parent = np.arange(len(nodes), dtype=np.int64)
    ia = np.searchsorted(nodes, a)
    union_edges(parent, ia, np.searchsorted(nodes, b))
    compress(parent)
    return nodes[parent[ia]] % n_shards


@dataclass
class BandStep:
    """Phase 3 as a step: one item per :data:`BANDS_PER_ITEM` bands (:func:`band_group`). The commit merges
    the edges; ``cliques``: writes ``pairs/<k>.npy`` (int64 ``(m, 2)``, the candidate pairs of shard ``k``,
    :func:`pair_shards`) and sets ``pair_paths``; ``components``: writes ``near_edges.npy`` (int64 ``(m, 2)``
    ``(doc, rep)``). ``buckets`` and ``edges`` (distinct pairs or edges) are the phase's counts."""

    band_paths: list[str]
    offsets: np.ndarray
    work: str
    bands: int
    clustering: str
    name: str = "dedup bands"
    item_fn: Callable[..., ItemResult] = band_group
    started: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        for sub in ("candidates", "pairs"):  # a killed run's files: never read, rewritten below
            shutil.rmtree(os.path.join(self.work, sub), ignore_errors=True)
        os.makedirs(os.path.join(self.work, "candidates"))
        groups = [list(range(s, min(self.bands, s + BANDS_PER_ITEM))) for s in range(0, self.bands, BANDS_PER_ITEM)]
        self.groups = [(g, os.path.join(self.work, "candidates", f"{i:05d}.npy")) for i, g in enumerate(groups)]
        self.pair_paths: list[str] = []
        self.edges_path = os.path.join(self.work, "near_edges.npy")
        self.buckets = self.edges = 0

    def items(self) -> list[WorkItem]:
        exact_path = os.path.join(self.work, "exact.npy")
        return [WorkItem(f"bands {g[0]}-{g[-1]}", (self.band_paths, self.offsets, exact_path, g, self.clustering, p))
                for g, p in self.groups]

    def commit(self, results: list[ItemResult]) -> StepReport:
        n = int(self.offsets[-1])
        key = np.zeros(0, np.int64)
        for _, path in self.groups:
            key = merge_distinct(key, np.load(path))
        a, b = key // n, key % n
        del key
        self.buckets, self.edges = sum(r.value["buckets"] for r in results), int(len(a))
        if self.clustering == "cliques":
            self._write_pair_shards(a, b)
        else:
            _save(self.edges_path, np.stack([a, b], axis=1))
        return StepReport.of(self.name, results, time.time() - self.started)

    def _write_pair_shards(self, a: np.ndarray, b: np.ndarray) -> None:
        os.makedirs(os.path.join(self.work, "pairs"))
        n_shards = int(min(MAX_PAIR_SHARDS, max(1, -(-len(a) // PAIRS_PER_SHARD))))
        shard = pair_shards(a, b, n_shards) if len(a) else np.zeros(0, np.int64)
        for k in range(n_shards if len(a) else 0):
            sel = shard == k
            path = os.path.join(self.work, "pairs", f"{k:05d}.npy")
            _save(path, np.stack([a[sel], b[sel]], axis=1))
            self.pair_paths.append(path)


def _save(path: str, array: np.ndarray) -> None:
    """``np.save`` to ``path`` atomically."""
    with fsutil.atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)
