"""Verify LSH candidates on their signatures and cluster them with the exact groups (union-find)."""
from __future__ import annotations

import numpy as np

from xgen_data.attributes.clusters import clique_clusters, compress, union_edges
from xgen_data.attributes.dedup.bands import lsh_candidates
from xgen_data.attributes.dedup.params import EDGE_BATCH, DedupParams, DedupReport, sql_list
from xgen_data.attributes.dedup.signatures import sig_array_path
from xgen_data.attributes import minhash
from xgen_data.errors import DamagedDataError


class SigStore:
    """Signature rows of any documents, read from the parts' signature matrices (:func:`sig_array_path`).

    Each read maps the matrices (``np.load(mmap_mode="r")``), copies the requested rows and unmaps them, so the
    process holds only the rows asked for, never all signatures.

    Args:
        paths: the parts' ``.sig.npy`` files, in document-number order.
        offsets: int64 ``(n_parts + 1,)``: document ``d`` is row ``d - offsets[k]`` of part ``k``.
    """

    def __init__(self, paths: list[str], offsets: np.ndarray, num_perm: int, dtype: np.dtype):
        self.paths, self.offsets, self.num_perm, self.dtype = list(paths), np.asarray(offsets), num_perm, dtype

    def rows(self, docs: np.ndarray) -> np.ndarray:
        """Signatures of global document numbers ``docs`` (int64 ``(m,)``): shape ``(m, num_perm)``."""
        docs = np.asarray(docs, dtype=np.int64)
        out = np.empty((len(docs), self.num_perm), dtype=self.dtype)
        part = np.searchsorted(self.offsets, docs, side="right") - 1
        for k in np.unique(part).tolist():
            sel = np.flatnonzero(part == k)
            mat = np.load(self.paths[k], mmap_mode="r")
            if mat.shape != (self.offsets[k + 1] - self.offsets[k], self.num_perm):
                raise DamagedDataError(f"{self.paths[k]}: signature matrix of shape {mat.shape} does not match its "
                                       "part; delete work/dedup and re-run")
            out[sel] = mat[docs[sel] - self.offsets[k]]
            del mat
        return out


class RowsOf:
    """``sig[i]`` = the signatures of ``nodes[i]`` from a :class:`SigStore` (what :func:`clique_clusters` reads)."""

    def __init__(self, store: SigStore, nodes: np.ndarray):
        self.store, self.nodes = store, nodes
        self.shape = (len(nodes), store.num_perm)

    def __len__(self) -> int:
        return len(self.nodes)

    def __getitem__(self, idx):
        return self.store.rows(self.nodes[np.asarray(idx, dtype=np.int64)])


def _verified_cliques(con, report: DedupReport, params: DedupParams, band_paths: list[str], sig_paths: list[str],
                      offsets: np.ndarray, n_docs: int) -> tuple[np.ndarray, np.ndarray]:
    """Candidate pairs among exact-group representatives, verified into cliques (NumPy over the work files).

    Each exact group (documents with words) enters as its smallest document, so a bucket holds distinct texts;
    in a bucket every member is paired with the first :data:`BUCKET_PAIR_CAP` members (all pairs in buckets up
    to that size; :func:`bucket_pairs`). Signatures are read only for the pairs being verified
    (:class:`SigStore`, in chunks).

    Returns:
        ``(doc, label)`` int64 arrays of equal shape: each candidate document and the smallest document of its
        clique (:func:`clique_clusters`); fills ``report.near_buckets``, ``report.near_edges`` (distinct
        candidate pairs) and ``report.verified_pairs``.
    """
    rep = np.arange(n_docs, dtype=np.int64)
    ex = con.execute("SELECT doc, gid FROM exact_members WHERE doc <> gid").fetchnumpy()
    rep[np.asarray(ex["doc"], dtype=np.int64)] = np.asarray(ex["gid"], dtype=np.int64)
    a, b, report.near_buckets = lsh_candidates(band_paths, offsets, rep, params.bands)
    report.near_edges = int(len(a))
    nodes = np.unique(np.concatenate([a, b]))
    if not len(nodes):
        report.verified_pairs = 0
        return nodes, nodes.copy()
    store = SigStore([sig_array_path(p) for p in sig_paths], offsets, params.num_perm,
                     minhash.sig_dtype(params.scheme))
    label, verified = clique_clusters(RowsOf(store, nodes), np.searchsorted(nodes, a), np.searchsorted(nodes, b),
                                      params.threshold)
    report.verified_pairs = verified
    return nodes, nodes[label]


def _feed(con, parent: np.ndarray, sql: str) -> int:
    """Union the edges ``(u, v)`` that ``sql`` returns (streamed in batches of :data:`EDGE_BATCH`) into
    ``parent``; returns the number of edges."""
    n_edges = 0
    for batch in con.sql(sql).to_arrow_reader(EDGE_BATCH):
        u = batch.column(0).to_numpy()
        union_edges(parent, u, batch.column(1).to_numpy())
        n_edges += len(u)
    compress(parent)
    return n_edges


def cluster_documents(con, report: DedupReport, params: DedupParams, tasks: list[dict], offsets: np.ndarray,
              n_docs: int) -> tuple[np.ndarray, np.ndarray]:
    """Clusters of the run: exact groups (when on) and near duplicates (verified cliques, or StarCoder's
    components), joined by a union-find over one int64 per document.

    Returns:
        ``(doc, cluster)`` int64 arrays: every document in a cluster of ≥ 2 and its cluster's smallest document.
        Fills ``report.clusters``, ``report.clustered_documents`` and the near-duplicate counts.
    """
    parent = np.arange(n_docs, dtype=np.int64)
    cliques = params.near and params.clustering == "cliques"
    if params.exact:
        _feed(con, parent, "SELECT doc, gid FROM exact_members WHERE doc <> gid")
    elif cliques:  # exact copies with words have identical signatures: near copies of each other
        _feed(con, parent, "SELECT e.doc, e.gid FROM exact_members e JOIN sig s USING (doc) WHERE e.doc <> e.gid "
                           "AND s.n_words > 0")
    band_paths = [tk["bands"] for tk in tasks]
    if cliques:
        rep_doc, rep_label = _verified_cliques(con, report, params, band_paths, [tk["sig"] for tk in tasks],
                                               offsets, n_docs)
        moved = rep_label != rep_doc
        union_edges(parent, rep_doc[moved], rep_label[moved])
        compress(parent)
    elif params.near:
        con.execute(f"""CREATE TEMP VIEW band_rows AS SELECT b.band, b.bhash, p.doff + b.row AS doc
            FROM read_parquet({sql_list(band_paths)}, filename=true) b JOIN parts p ON b.filename = p.band_path""")
        report.near_buckets = con.execute("""SELECT count(*) FROM
            (SELECT 1 FROM band_rows GROUP BY band, bhash HAVING count(*) > 1)""").fetchall()[0][0]
        con.execute("""CREATE TEMP TABLE near_edges AS SELECT DISTINCT doc, rep FROM (
            SELECT doc, min(doc) OVER (PARTITION BY band, bhash) AS rep,
                   count(*) OVER (PARTITION BY band, bhash) AS k FROM band_rows) WHERE k > 1 AND doc <> rep""")
        report.near_edges = _feed(con, parent, "SELECT doc, rep FROM near_edges")
    sizes = np.bincount(parent, minlength=n_docs)
    member = np.nonzero(sizes[parent] > 1)[0]
    report.clusters = int(np.count_nonzero(sizes > 1))
    report.clustered_documents = int(len(member))
    return member, parent[member]
