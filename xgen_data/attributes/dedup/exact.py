"""Dedup phase 2, exact duplicates: documents with equal content hash, one work item per hash shard.

Item ``k`` of ``n`` reads the content hashes of every part (``sig/*.parquet``, 16 bytes a document), keeps
those whose hash falls in shard ``k`` (the hash's first eight bytes mod ``n``: a group never spans two
shards), groups them and writes the members of groups of two or more to ``exact/<k>.npz``: ``doc`` (global
document number), ``gid`` (the smallest document of its group) and ``words`` (the document has at least one
word). The commit gathers the shards into one dense array, ``exact.npy``: int64 per document, its group's
smallest document, -1 when its text is unique. Which shard a hash falls in changes no group, so the result
is the same for any number of shards, workers and any item order.
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from xgen_data.execute.contract import ItemResult, StepReport, WorkItem
from xgen_data.store import fsutil

#: Documents per exact shard (each item holds 40 bytes per document of its shard).
DOCS_PER_SHARD = 1 << 23
#: At most this many shards (each item reads the content hashes of every part).
MAX_SHARDS = 64


def shard_count(n_docs: int) -> int:
    """Hash shards for ``n_docs`` documents: one per :data:`DOCS_PER_SHARD`, 1 to :data:`MAX_SHARDS`."""
    return int(min(MAX_SHARDS, max(1, -(-n_docs // DOCS_PER_SHARD))))


def hash_words(chash: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A ``binary(16)`` column as uint64 shape ``(m, 2)`` (its bytes, little-endian words)."""
    arr = chash.combine_chunks() if isinstance(chash, pa.ChunkedArray) else chash
    if len(arr) == 0:
        return np.zeros((0, 2), dtype=np.uint64)
    raw = np.frombuffer(arr.buffers()[1], dtype=np.uint64, count=2 * (arr.offset + len(arr)))
    return raw[2 * arr.offset:].reshape(-1, 2)


def exact_dense_path(work: str) -> str:
    """The committed result of the phase: ``work/dedup/exact.npy``."""
    return os.path.join(work, "exact.npy")


def exact_shard(sig_paths: list[str], offsets: np.ndarray, shard: int, n_shards: int, out_path: str) -> ItemResult:
    """The work item of one hash shard (module docstring): writes ``out_path`` (``.npz`` of int64 ``doc``,
    int64 ``gid``, bool ``words``, sorted by ``doc``) atomically.

    Args:
        sig_paths: every part's ``sig`` work file, in document-number order; offsets: int64 ``(n_parts + 1,)``.
    Returns:
        value ``{"groups", "members", "no_words"}`` (groups of ≥ 2, their documents, documents of the shard
        with zero words); ``documents`` = the shard's documents, ``bytes`` = their hash bytes read.
    """
    t0 = time.time()
    docs, keys, words = [], [], []
    for k, path in enumerate(sig_paths):
        t = pq.read_table(path, columns=["row", "chash", "n_words"])
        h = hash_words(t.column("chash"))
        sel = h[:, 0] % np.uint64(n_shards) == np.uint64(shard)
        docs.append(offsets[k] + t.column("row").to_numpy().astype(np.int64)[sel])
        keys.append(h[sel])
        words.append(t.column("n_words").to_numpy(zero_copy_only=False)[sel])
    doc = np.concatenate(docs) if docs else np.zeros(0, np.int64)
    key = np.concatenate(keys) if keys else np.zeros((0, 2), np.uint64)
    n_words = np.concatenate(words) if words else np.zeros(0)
    order = np.lexsort((doc, key[:, 1], key[:, 0]))
    doc, key, n_words = doc[order], key[order], n_words[order]
    new = np.ones(len(doc), dtype=bool)
    new[1:] = (key[1:] != key[:-1]).any(axis=1)
    start = np.flatnonzero(new)
    size = np.diff(np.append(start, len(doc)))
    gid = np.repeat(doc[start], size)
    member = np.repeat(size > 1, size)
    by_doc = np.argsort(doc[member], kind="stable")
    with_words = np.nan_to_num(n_words.astype(np.float64), nan=0.0) > 0  # n_words is null in exact-only runs
    with fsutil.atomic_path(out_path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, doc=doc[member][by_doc], gid=gid[member][by_doc], words=with_words[member][by_doc])
    no_words = int(np.count_nonzero(np.nan_to_num(n_words.astype(np.float64), nan=1.0) == 0))
    return ItemResult(f"exact shard {shard}/{n_shards}", value={"groups": int(np.count_nonzero(size > 1)),
                      "members": int(member.sum()), "no_words": no_words},
                      documents=int(len(doc)), bytes=16 * int(len(doc)), seconds=time.time() - t0)


def exact_edges(shard_paths: list[str], with_words_only: bool = False):
    """Yield ``(doc, gid)`` int64 arrays of the members that are not their group's smallest document, shard by
    shard (``with_words_only``: members with at least one word)."""
    for path in shard_paths:
        with np.load(path) as z:
            doc, gid, words = z["doc"], z["gid"], z["words"]
        keep = doc != gid
        if with_words_only:
            keep &= words
        yield doc[keep], gid[keep]


@dataclass
class ExactStep:
    """Phase 2 as a step: one item per hash shard (:func:`exact_shard`); the commit writes ``exact.npy``
    (:func:`exact_dense_path`) and returns the step's report; ``groups``, ``members`` and ``no_words`` are
    the phase's counts after the commit."""

    sig_paths: list[str]
    offsets: np.ndarray
    work: str
    n_shards: int = 0  # 0: shard_count(documents)
    name: str = "dedup exact"
    item_fn: Callable[..., ItemResult] = exact_shard
    started: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        self.n_docs = int(self.offsets[-1])
        self.n_shards = self.n_shards or shard_count(self.n_docs)
        self.folder = os.path.join(self.work, "exact")
        shutil.rmtree(self.folder, ignore_errors=True)  # a killed run's shards: never read, rewritten below
        os.makedirs(self.folder)
        self.shard_paths = [os.path.join(self.folder, f"{k:05d}.npz") for k in range(self.n_shards)]
        self.groups = self.members = self.no_words = 0

    def items(self) -> list[WorkItem]:
        return [WorkItem(f"exact shard {k}/{self.n_shards}", (self.sig_paths, self.offsets, k, self.n_shards, p))
                for k, p in enumerate(self.shard_paths)]

    def commit(self, results: list[ItemResult]) -> StepReport:
        gid = np.full(self.n_docs, -1, dtype=np.int64)
        for path in self.shard_paths:
            with np.load(path) as z:
                gid[z["doc"]] = z["gid"]
        with fsutil.atomic_path(exact_dense_path(self.work)) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, gid)
        self.groups = sum(r.value["groups"] for r in results)
        self.members = sum(r.value["members"] for r in results)
        self.no_words = sum(r.value["no_words"] for r in results)
        return StepReport.of(self.name, results, time.time() - self.started)
