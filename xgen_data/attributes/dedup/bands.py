"""LSH bands: bucket pairs per band (NumPy, one band of the corpus in memory) and candidate pairs."""
from __future__ import annotations

import os

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from xgen_data.attributes.dedup.params import BUCKET_PAIR_CAP, sql_list
from xgen_data.store.corpus import Corpus


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
    order = np.lexsort((doc, bhash))
    h, d = bhash[order], doc[order]
    if len(h) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), 0
    new_h = np.concatenate([[True], h[1:] != h[:-1]])
    run_start = np.flatnonzero(new_h)
    run_len = np.diff(np.append(run_start, len(h)))
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


def lsh_candidates(band_paths: list[str], offsets: np.ndarray, rep: np.ndarray, bands: int
                        ) -> tuple[np.ndarray, np.ndarray, int]:
    """Distinct candidate pairs ``(a, b)``, ``a < b`` (exact-group representatives), over all bands, band by band.

    Reads band ``i`` of every part (row group ``i`` of the band-major work files), so memory holds one band of
    the corpus (about 16 bytes per document) plus the distinct pairs so far (8 bytes each, merged per band).
    ``rep``: int64 per document, its exact-group representative, -1 for documents without words (they have
    no band rows).
    """
    files = [pq.ParquetFile(f) for f in band_paths]
    key, buckets = np.zeros(0, np.int64), 0
    n = len(rep)
    for band in range(bands):
        hs, ds = [], []
        for k, f in enumerate(files):
            if f.metadata.num_rows == 0:
                continue
            t = f.read_row_group(band, columns=["bhash", "row"])
            hs.append(t.column("bhash").to_numpy())
            ds.append(offsets[k] + t.column("row").to_numpy().astype(np.int64))
        if not hs:
            continue
        a, b, nb = bucket_pairs(np.concatenate(hs), rep[np.concatenate(ds)])
        buckets += nb
        key = merge_distinct(key, a * n + b)  # distinct pairs so far: memory does not grow with the band count
    return key // n, key % n, buckets


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
