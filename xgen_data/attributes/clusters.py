"""Clusters from candidate pairs: union-find components and verified cliques (dedup phase 2).

:func:`union_edges` / :func:`compress` give StarCoder's connected components over O(documents) integers;
:func:`clique_clusters` verifies LSH candidate pairs on the MinHash signatures (:func:`estimated_jaccard`) and
splits each verified component into cliques, so every removed document is within the Jaccard threshold of the
copy a recipe keeps. The greedy clique pass is a Numba kernel (imported and compiled on first use, cached on disk, like
:mod:`xgen_data.attributes.minhash_jit`); everything else is NumPy over whole arrays.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np


# --------------------------------------------------------------------------------------------------
# Phase 2: union-find over O(documents) integers
# --------------------------------------------------------------------------------------------------
def _roots(parent: np.ndarray, x: np.ndarray) -> np.ndarray:
    r = parent[x]
    while True:
        r2 = parent[r]
        if np.array_equal(r2, r):
            return r
        r = r2


def union_edges(parent: np.ndarray, u: np.ndarray, v: np.ndarray) -> None:
    """Merge the components of edges ``(u[i], v[i])`` in ``parent`` (in place).

    Args:
        parent: int64 shape ``(n,)``, a forest where every root is the smallest document of its tree
            (start with ``np.arange(n)``). The invariant is kept: a root is always hooked under a smaller
            root, so after :func:`compress` each document maps to the smallest document of its component,
            whatever the order of the edges.
        u, v: int64 arrays of equal shape, values in ``[0, n)``.
    """
    u = np.asarray(u, dtype=np.int64)
    v = np.asarray(v, dtype=np.int64)
    while u.size:
        ru, rv = _roots(parent, u), _roots(parent, v)
        diff = ru != rv
        if not diff.any():
            return
        u, v, ru, rv = u[diff], v[diff], ru[diff], rv[diff]
        lo, hi = np.minimum(ru, rv), np.maximum(ru, rv)
        np.minimum.at(parent, hi, lo)


def compress(parent: np.ndarray) -> np.ndarray:
    """Point every entry straight at its root (in place); returns ``parent``."""
    while True:
        p2 = parent[parent]
        if np.array_equal(p2, parent):
            return parent
        parent[:] = p2


# --------------------------------------------------------------------------------------------------
# Phase 2b: candidate verification and clique clusters
# --------------------------------------------------------------------------------------------------
def estimated_jaccard(sig: np.ndarray, u: np.ndarray, v: np.ndarray, chunk: int = 1 << 14) -> np.ndarray:
    """MinHash estimate of the Jaccard similarity of pairs: the share of equal signature values.

    Args:
        sig: shape ``(n, num_perm)``, uint32 or uint64 signatures
            (:func:`xgen_data.attributes.minhash.signatures_from_hashes`).
        u, v: int64 arrays of equal shape ``(m,)``, row indices into ``sig``.
        chunk: pairs compared per NumPy step (memory ``chunk × num_perm`` bytes).
    Returns:
        float64 shape ``(m,)`` in [0, 1]; its standard error is ``sqrt(J (1 − J) / num_perm)`` (0.029 at J = 0.7
        with 256 permutations; Broder 1997).
    """
    u = np.asarray(u, dtype=np.int64)
    v = np.asarray(v, dtype=np.int64)
    out = np.empty(len(u), dtype=np.float64)
    k = sig.shape[1]
    for s in range(0, len(u), chunk):
        out[s:s + chunk] = np.count_nonzero(sig[u[s:s + chunk]] == sig[v[s:s + chunk]], axis=1) / k
    return out


#: Signature rows read at once while cliques are built (16,384 × 256 × 4 bytes = 16 MiB for ``affine32``).
CLIQUE_BATCH_ROWS = 1 << 14


def _component_batches(groups: list[np.ndarray]):
    """Yield ``(rows, seeds)`` per batch of whole components, in order: ``rows`` the sorted rows of the batch
    (≤ :data:`CLIQUE_BATCH_ROWS` unless one component is larger), ``seeds`` its components' nodes concatenated
    in their seed order, so each batch's signatures are read once."""
    i = 0
    while i < len(groups):
        j, total = i + 1, len(groups[i])
        while j < len(groups) and total + len(groups[j]) <= CLIQUE_BATCH_ROWS:
            total += len(groups[j])
            j += 1
        seeds = np.concatenate(groups[i:j])
        yield np.sort(seeds), seeds
        i = j


def _greedy_cliques(gsig, rows, seeds, starts, dst, assigned, label, threshold):
    """The greedy clique pass of :func:`clique_clusters` over one batch of components (compiled, in place).

    ``gsig[i]`` are the signatures of row ``rows[i]`` (``rows`` sorted); ``seeds`` the batch's nodes in seed
    order; ``dst[starts[r]:starts[r + 1]]`` the verified neighbours of row ``r``, most similar first;
    ``assigned`` (bool) and ``label`` (int64) are indexed by row and updated in place.
    """
    k = gsig.shape[1]
    at = np.empty(len(rows), dtype=np.int64)  # batch index of each member of the current clique
    members = np.empty(len(rows), dtype=np.int64)
    for seed in seeds:
        if assigned[seed]:
            continue
        assigned[seed] = True
        at[0], members[0], m = np.searchsorted(rows, seed), seed, 1
        for j in range(starts[seed], starts[seed + 1]):
            c = dst[j]
            if assigned[c]:
                continue
            ci = np.searchsorted(rows, c)
            ok = True
            for t in range(m):
                eq = 0
                for p in range(k):
                    eq += gsig[at[t], p] == gsig[ci, p]
                if eq / k < threshold:
                    ok = False
                    break
            if ok:
                at[m], members[m] = ci, c
                m += 1
                assigned[c] = True
        low = members[:m].min()
        for t in range(m):
            label[members[t]] = low


@lru_cache(maxsize=1)
def _greedy_kernel():
    """:func:`_greedy_cliques` compiled with Numba on first use (numba is imported only then: a process that
    never builds cliques does not pay for it)."""
    import numba as nb

    return nb.njit(cache=True, nogil=True)(_greedy_cliques)


def clique_clusters(sig: np.ndarray, u: np.ndarray, v: np.ndarray, threshold: float) -> tuple[np.ndarray, int]:
    """Verified clusters: every two members of a cluster have estimated Jaccard ≥ ``threshold``.

    Candidate pairs ``(u[i], v[i])`` are verified on the signatures (:func:`estimated_jaccard` ≥ threshold);
    each connected component of the verified graph is then split greedily into cliques: the unassigned
    document with the most verified neighbours (then the smallest index) seeds a clique, and its unassigned
    verified neighbours, most similar first (then smallest index), join when their estimated Jaccard with every
    member so far is ≥ ``threshold``; repeat. Because any two members are verified-similar, whichever copy a
    recipe's keep rule picks (:mod:`xgen_data.mixing.decisions`, per recipe in SQL), every removed member is within the
    threshold of it; a chain A≈B≈C with A, C far apart never removes C for A. The result depends only on the
    signatures and the pair set, not on the order of the pairs.

    Args:
        sig: shape ``(n, num_perm)`` signatures of the candidate documents (rows ``0..n-1``).
        u, v: int64 shape ``(m,)``: candidate pairs (row indices, ``u != v``; duplicates allowed).
        threshold: Jaccard threshold in (0, 1).
    Returns:
        ``(label, verified)``: ``label`` int64 shape ``(n,)``, the smallest row of each row's clique (a row in
        no clique of ≥ 2 is its own label); ``verified`` the number of distinct candidate pairs that passed.
    """
    n = len(sig)
    label = np.arange(n, dtype=np.int64)
    u = np.asarray(u, dtype=np.int64)
    v = np.asarray(v, dtype=np.int64)
    if not len(u):
        return label, 0
    key = np.sort(np.minimum(u, v) * n + np.maximum(u, v))  # pairs sorted by (a, b); n < 2^31
    key = key[np.concatenate([[True], key[1:] != key[:-1]])]  # distinct (np.unique would hash them all)
    a, b = key // n, key % n
    del key
    est = estimated_jaccard(sig, a, b)
    ok = est >= threshold
    a, b, est = a[ok], b[ok], est[ok]
    if not len(a):
        return label, 0
    parent = np.arange(n, dtype=np.int64)
    union_edges(parent, a, b)
    compress(parent)
    sizes = np.bincount(parent, minlength=n)
    # components of two: the verified edge is the clique
    two = sizes[parent[a]] == 2
    label[b[two]] = a[two]
    big = ~two
    if not big.any():
        return label, int(len(a))
    # adjacency (both directions) of the larger components, each row's neighbours most similar first
    src = np.concatenate([a[big], b[big]])
    dst = np.concatenate([b[big], a[big]])
    w = np.concatenate([est[big], est[big]])
    order = np.lexsort((dst, -w, src))
    src, dst = src[order], dst[order]
    starts = np.searchsorted(src, np.arange(n + 1))
    deg = np.diff(starts)
    nodes = np.unique(src)
    comp = parent[nodes]
    by = np.lexsort((nodes, -deg[nodes], comp))  # per component: most neighbours first, then smallest row
    nodes, comp = nodes[by], comp[by]
    assigned = np.zeros(n, dtype=bool)
    cuts = np.flatnonzero(np.diff(comp)) + 1
    for rows, seeds in _component_batches(np.split(nodes, cuts)):
        # these components' signatures only, read once per batch; the greedy pass is compiled
        _greedy_kernel()(np.ascontiguousarray(sig[rows]), rows, seeds, starts, dst, assigned, label, threshold)
    return label, int(len(a))
