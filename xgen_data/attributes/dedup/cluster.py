"""Dedup phase 4, verify and cluster: candidate pairs verified on their signatures into cliques, one work item
per pair shard, then one union-find over exact and near edges in the commit.

The bands phase cut the candidate pairs into shards by connected component (:func:`.bands.pair_shards`);
:func:`clique_clusters` works per component, so each shard is verified on its own (:func:`verify_shard`,
reading only its documents' signature rows) and the shards' cliques are those of all pairs at once. The commit
joins, in a union-find over one int64 per document (:func:`union_edges`: the result is each component's
smallest document whatever the order of the edges), the exact groups (when on) and the verified cliques (or,
with ``components``, StarCoder's unverified star edges), and writes ``cluster.npy``: int64 per document, its
cluster's smallest document, -1 for a document in no cluster of two or more.
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from xgen_data.attributes import minhash
from xgen_data.attributes.clusters import clique_clusters, compress, union_edges
from xgen_data.attributes.dedup.exact import exact_edges
from xgen_data.attributes.dedup.params import DedupParams
from xgen_data.attributes.dedup.signatures import sig_array_path
from xgen_data.errors import DamagedDataError
from xgen_data.execute.contract import ItemResult, StepReport, WorkItem
from xgen_data.store import fsutil


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


def cluster_dense_path(work: str) -> str:
    """The committed result of the phase: ``work/dedup/cluster.npy``."""
    return os.path.join(work, "cluster.npy")


def verify_shard(pairs_path: str, sig_paths: list[str], offsets: np.ndarray, num_perm: int, scheme: str,
                 threshold: float, out_path: str) -> ItemResult:
    """The work item of one pair shard: its candidate pairs (``pairs_path``, int64 ``(m, 2)``) verified into
    cliques (:func:`clique_clusters`, signatures read through :class:`SigStore`).

    Writes ``out_path`` atomically: int64 ``(2, k)``, each candidate document whose clique's smallest document
    is another one, and that document. Returns value ``{"verified": distinct pairs that passed}``;
    ``documents`` = the shard's candidate documents, ``bytes`` = their signature bytes read.
    """
    t0 = time.time()
    pairs = np.load(pairs_path)
    a, b = pairs[:, 0], pairs[:, 1]
    nodes = np.unique(np.concatenate([a, b]))
    dtype = minhash.sig_dtype(scheme)
    verified, moved = 0, np.zeros((2, 0), np.int64)
    if len(nodes):
        store = SigStore([sig_array_path(p) for p in sig_paths], offsets, num_perm, dtype)
        label, verified = clique_clusters(RowsOf(store, nodes), np.searchsorted(nodes, a),
                                          np.searchsorted(nodes, b), threshold)
        keep = label != np.arange(len(nodes))
        moved = np.stack([nodes[keep], nodes[label[keep]]])
    with fsutil.atomic_path(out_path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, moved)
    return ItemResult(os.path.basename(pairs_path), value={"verified": int(verified)}, documents=int(len(nodes)),
                      bytes=int(len(nodes)) * num_perm * np.dtype(dtype).itemsize, seconds=time.time() - t0)


@dataclass
class ClusterStep:
    """Phase 4 as a step: one item per pair shard (``cliques``; none otherwise), then the union-find in the
    commit (module docstring), which writes ``cluster.npy`` and returns the step's report; ``clusters``,
    ``clustered_documents`` and ``verified`` are the phase's counts after the commit.

    ``exact_shards``: the exact phase's shard files; ``edges_path``: the bands phase's star edges
    (``components``).
    """

    pair_paths: list[str]
    sig_paths: list[str]
    offsets: np.ndarray
    work: str
    params: DedupParams
    exact_shards: list[str]
    edges_path: str | None = None
    name: str = "dedup cluster"
    item_fn: Callable[..., ItemResult] = verify_shard
    started: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        self.folder = os.path.join(self.work, "verified")
        shutil.rmtree(self.folder, ignore_errors=True)  # a killed run's cliques: never read, rewritten below
        os.makedirs(self.folder)
        self.out_paths = [os.path.join(self.folder, os.path.basename(p)) for p in self.pair_paths]
        self.clusters = self.clustered_documents = self.verified = 0

    def items(self) -> list[WorkItem]:
        p = self.params
        return [WorkItem(f"pairs {os.path.basename(src)}", (src, self.sig_paths, self.offsets, p.num_perm, p.scheme,
                                                           p.threshold, out))
                for src, out in zip(self.pair_paths, self.out_paths)]

    def commit(self, results: list[ItemResult]) -> StepReport:
        n_docs = int(self.offsets[-1])
        parent = np.arange(n_docs, dtype=np.int64)
        cliques = self.params.near and self.params.clustering == "cliques"
        if self.params.exact or cliques:  # exact copies with words have identical signatures: near copies
            for doc, gid in exact_edges(self.exact_shards, with_words_only=not self.params.exact):
                union_edges(parent, doc, gid)
        for path in self.out_paths if cliques else []:
            doc, label = np.load(path)
            union_edges(parent, doc, label)
        if self.params.near and not cliques:
            edges = np.load(self.edges_path)
            union_edges(parent, edges[:, 0], edges[:, 1])
        compress(parent)
        sizes = np.bincount(parent, minlength=n_docs)
        in_cluster = sizes[parent] > 1
        with fsutil.atomic_path(cluster_dense_path(self.work)) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, np.where(in_cluster, parent, -1))
        self.clusters = int(np.count_nonzero(sizes > 1))
        self.clustered_documents = int(np.count_nonzero(in_cluster))
        self.verified = sum(r.value["verified"] for r in results)
        return StepReport.of(self.name, results, time.time() - self.started)
