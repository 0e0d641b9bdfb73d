"""Quality of near-duplicate detection against exact Jaccard similarity, on real documents.

Runs :func:`xgen_data.attributes.defaults.run_dedup` on a corpus (default parameters unless given), takes a uniform random
sample of its documents, and compares, within the sample:

* **flagged pairs**: pairs of sampled documents that share at least one LSH bucket (equal band hash in any
  band; read from the run's ``work/dedup/bands`` files) — every pair the LSH step proposed. **Precision** =
  share of flagged pairs whose true Jaccard similarity is ≥ 0.6.
* **true pairs**: every pair of sampled documents whose true Jaccard similarity is ≥ 0.8, found exactly
  with a prefix-filtering similarity join (AllPairs, Bayardo et al. 2007). **Recall** = share of true pairs
  of which dedup removes at least one document (so the pair does not appear twice in the data; the keep
  rule of the corpus defaults); *same cluster* = share whose documents end up in one cluster.
* **removed documents**: every document removed as a near duplicate (``dup_reason = near_duplicate`` in the
  ``documents`` view of the corpus defaults), or a random ``--removed`` of them. **Removal precision** =
  share whose true Jaccard with the copy its cluster keeps (``dup_of``) is ≥ the threshold.

True Jaccard is computed on the exact shingle sets of :func:`xgen_data.attributes.minhash.shingles` (the shingles
MinHash sees), each shingle identified by its 64-bit SHA-1 prefix (a collision needs ~2^32 shingles per
pair; none is expected). Documents without shingles (no words) have no Jaccard and are left out. Pairs of
identical shingle sets (mostly exact copies, which the content hash finds anyway) are reported separately
too, so the near-duplicate part is visible on its own. Targets: removal precision ≥ 0.95 and
recall ≥ 0.95 at Jaccard ≥ 0.8. ``--clustering components`` evaluates StarCoder's plain connected components.

Usage::

    python benchmarks/eval_dedup_quality.py                          # the shared sample slice (ingested to a temp dir)
    python benchmarks/eval_dedup_quality.py --full                   # the full shared corpus (ingested to a temp dir)
    python benchmarks/eval_dedup_quality.py --corpus /tmp/dd/corpus --docs 30000 [--clustering components]
    python benchmarks/eval_dedup_quality.py --smoke                  # CI: the sample slice, 500 sampled documents
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from collections import defaultdict

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
SHARED = os.environ.get("XGEN_SHARED") or os.path.abspath(os.path.join(HERE, "..", "..", "shared"))
os.environ.setdefault("XGEN_GPT2_BPE", os.path.join(SHARED, "tokenizer", "gpt2.tiktoken"))

import pyarrow.parquet as pq  # noqa: E402

from xgen_data.attributes import minhash  # noqa: E402
from xgen_data.attributes.dedup import bands as dbands
from xgen_data.attributes.dedup import params as dparams
from xgen_data.mixing import defaults
from xgen_data.store.corpus import Corpus  # noqa: E402


def shingle_sets(texts: list[str], ngram: int) -> list[np.ndarray]:
    """Sorted unique uint64 (SHA-1 prefix) ids of each text's shingles."""
    hashes, offsets = minhash.hash_shingle_lists([minhash.shingles(t, ngram) for t in texts], scheme="affine64")
    return [np.unique(hashes[offsets[i]:offsets[i + 1]]) for i in range(len(texts))]


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (len(a) + len(b) - inter)


def similar_pairs(sets: list[np.ndarray], t: float) -> dict[tuple[int, int], float]:
    """All pairs ``(i, j)``, ``i < j``, with Jaccard ≥ ``t``, exactly (prefix + size filtering, then verify)."""
    idx = [i for i, s in enumerate(sets) if len(s)]
    allv = np.concatenate([sets[i] for i in idx]) if idx else np.zeros(0, np.uint64)
    uniq, inv, counts = np.unique(allv, return_inverse=True, return_counts=True)
    order = np.lexsort((np.arange(len(uniq)), counts))  # rarest first
    rank = np.empty(len(uniq), np.int64)
    rank[order] = np.arange(len(uniq))
    ranked, pos = {}, 0
    for i in idx:
        n = len(sets[i])
        ranked[i] = np.sort(rank[inv[pos:pos + n]])
        pos += n
    index: dict[int, list[int]] = defaultdict(list)
    out = {}
    for i in sorted(idx, key=lambda k: (len(sets[k]), k)):
        n = len(sets[i])
        p = n - math.ceil(t * n - 1e-9) + 1
        cands = set()
        for tok in ranked[i][:p].tolist():
            for j in index.get(tok, ()):
                if len(sets[j]) >= t * n - 1e-9:
                    cands.add(j)
            index[tok].append(i)
        for j in cands:
            jac = jaccard(sets[i], sets[j])
            if jac >= t:
                out[(min(i, j), max(i, j))] = jac
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", help="corpus directory (default: ingest the shared sample slice to a temp dir)")
    ap.add_argument("--full", action="store_true", help="ingest the full shared corpus (nl, code, instruct) to a "
                    "temp dir instead of the sample slice")
    ap.add_argument("--docs", type=int, default=30000, help="sampled documents (all when the corpus is smaller)")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed")
    ap.add_argument("--threshold", type=float, default=0.7)
    ap.add_argument("--num-perm", type=int, default=256)
    ap.add_argument("--ngram", type=int, default=5)
    ap.add_argument("--bands", type=int, default=None)
    ap.add_argument("--rows", type=int, default=None)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--clustering", choices=dparams.CLUSTERINGS, default="cliques")
    ap.add_argument("--removed", type=int, default=0,
                    help="near-removed documents checked for removal precision (0 = all of them)")
    ap.add_argument("--smoke", action="store_true", help="the sample slice, 500 sampled documents, 100 removed "
                                                         "checked (CI: every step runs)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.full, args.docs, args.removed = False, 500, args.removed or 100

    t0 = time.time()
    if args.corpus:
        corpus_dir = args.corpus
    else:
        from xgen_data.sources import ingest

        corpus_dir = os.path.join(tempfile.mkdtemp(prefix="xgen-eval-"), "corpus")
        files = [os.path.join(SHARED, "corpus", f"{n}.jsonl.zst") for n in ("nl", "code", "instruct")] if args.full \
            else [os.path.join(SHARED, "corpus", "sample", f"{n}.jsonl") for n in ("nl", "code", "instruct")]
        ingest.ingest(corpus_dir, [(f, None) for f in files], workers=args.workers, progress=False)
    rep = defaults.run_dedup(corpus_dir, threshold=args.threshold, num_perm=args.num_perm, ngram=args.ngram,
                          bands=args.bands, rows=args.rows, workers=args.workers, progress=False,
                          clustering=args.clustering)
    p = rep.params
    print(f"corpus {corpus_dir}: {rep.documents:,} documents; dedup {p['num_perm']} perms, {p['ngram']}-grams, "
          f"{p['bands']} bands x {p['rows']} rows (threshold {p['threshold']}), clustering {p['clustering']}; "
          f"{rep.clusters:,} clusters, {rep.removed:,} removed ({rep.removed_by_reason}) ({rep.seconds:.1f} s)")
    if p["clustering"] == "cliques":
        print(f"candidate pairs {rep.near_edges:,}, verified {rep.verified_pairs:,}")

    # -- sample ------------------------------------------------------------------------------------------
    corpus = Corpus(corpus_dir)
    parts = corpus.parts()
    offsets = dbands.doc_offsets(corpus)
    n = int(offsets[-1])
    rng = np.random.default_rng(args.seed)
    sample = np.sort(rng.choice(n, size=min(args.docs, n), replace=False))
    texts, clusters = [], []

    attr = dict((pt.name, f) for pt, f in corpus.attribute_files(
        "dedup", dparams.dedup_attr_params(corpus.default_decisions()["dedup"])))
    for k, pt in enumerate(parts):
        rows = sample[(sample >= offsets[k]) & (sample < offsets[k + 1])] - offsets[k]
        if not len(rows):
            continue
        texts += pq.read_table(pt.path, columns=["text"]).column("text").take(rows).to_pylist()
        clusters += pq.read_table(attr[pt.name], columns=["dup_cluster"]).column(
            "dup_cluster").take(rows).to_pylist()
    from xgen_data.stats import sql

    con = sql.connect(corpus_dir, quiet=True)
    reason_of = {(r[0], r[1], r[2]): r[3] for r in con.execute(
        "SELECT subset, part, row, dup_reason FROM documents WHERE dup_reason IS NOT NULL").fetchall()}
    removed_in_sample = []
    for k, pt in enumerate(parts):
        rows = sample[(sample >= offsets[k]) & (sample < offsets[k + 1])] - offsets[k]
        removed_in_sample += [reason_of.get((pt.subset, pt.name, int(r))) is not None for r in rows]
    sets = shingle_sets(texts, args.ngram)
    no_words = sum(1 for s in sets if not len(s))
    print(f"sample: {len(sample):,} documents (seed {args.seed}), {no_words} without shingles left out")

    # -- flagged pairs from the LSH buckets ---------------------------------------------------------------
    pairs = dbands.candidate_pairs(corpus_dir, sample)
    k_of = {int(d): k for k, d in enumerate(sample)}
    flagged = [(k_of[int(a)], k_of[int(b)]) for a, b in pairs]
    fj = np.array([jaccard(sets[a], sets[b]) for a, b in flagged]) if flagged else np.zeros(0)
    ident = fj >= 1.0
    prec = float(np.mean(fj >= 0.6)) if len(fj) else float("nan")
    prec_near = float(np.mean(fj[~ident] >= 0.6)) if (~ident).any() else float("nan")
    print(f"\nflagged pairs (share an LSH bucket): {len(fj):,}  ({int(ident.sum()):,} with identical shingle sets)")
    hist = [(lo, hi, int(((fj >= lo) & (fj < hi)).sum())) for lo, hi in
            ((0, .4), (.4, .5), (.5, .6), (.6, .7), (.7, .8), (.8, .9), (.9, 1.0), (1.0, 1.01))]
    print("  true Jaccard of flagged pairs: " + ", ".join(f"[{lo:.1f},{min(hi, 1):.1f}{']' if hi > 1 else ')'}: {c:,}"
                                                         for lo, hi, c in hist))
    print(f"  CANDIDATE PRECISION (flagged with Jaccard >= 0.6): {prec:.4f}   without identical-set pairs: "
          f"{prec_near:.4f}")

    # -- true pairs by exact similarity join --------------------------------------------------------------
    truth = similar_pairs(sets, 0.8)
    same = np.array([clusters[a] is not None and clusters[a] == clusters[b] for a, b in truth])
    resolved = np.array([removed_in_sample[a] or removed_in_sample[b] for a, b in truth])
    tj = np.array(list(truth.values()))
    fset = set(flagged)
    lsh_hit = np.array([pair in fset for pair in truth])
    print(f"\ntrue pairs (Jaccard >= 0.8): {len(tj):,}  ({int((tj >= 1).sum()):,} with identical shingle sets)")
    for lo, hi in ((0.8, 0.9), (0.9, 1.0), (1.0, 1.01)):
        m = (tj >= lo) & (tj < hi)
        if m.any():
            print(f"  Jaccard [{lo:.1f},{min(hi, 1):.1f}{']' if hi > 1 else ')'}: {int(m.sum()):,} pairs, "
                  f"one removed {resolved[m].mean():.4f}, same cluster {same[m].mean():.4f}, "
                  f"flagged directly {lsh_hit[m].mean():.4f}")
    rec = float(resolved.mean()) if len(resolved) else float("nan")
    print(f"  RECALL (one of the pair removed): {rec:.4f}   same cluster: "
          f"{same.mean() if len(same) else float('nan'):.4f}   flagged directly: "
          f"{lsh_hit.mean() if len(lsh_hit) else float('nan'):.4f}")

    # -- removal precision: each near-removed document against the copy its cluster keeps ------------------
    rem = con.execute("""SELECT r.text AS t, k.text AS kt FROM documents r
        JOIN documents k ON k.id = r.dup_of AND k.subset = r.dup_of_subset
        WHERE r.dup_reason = 'near_duplicate' ORDER BY r.subset, r.part, r.row""").fetchall()
    n_removed = len(rem)
    if args.removed and n_removed > args.removed:
        pick = np.sort(np.random.default_rng(args.seed).choice(n_removed, size=args.removed, replace=False))
        rem = [rem[i] for i in pick]
    con.close()
    rj = np.array([jaccard(x, y) for x, y in zip(shingle_sets([r[0] for r in rem], args.ngram),
                                                shingle_sets([r[1] for r in rem], args.ngram))
                   if len(x) and len(y)])
    t = args.threshold
    rprec = float(np.mean(rj >= t)) if len(rj) else float("nan")
    print(f"\nnear-removed documents: {n_removed:,} ({len(rj):,} checked against their kept copy)")
    hist = [(lo, hi, int(((rj >= lo) & (rj < hi)).sum())) for lo, hi in
            ((0, .4), (.4, .5), (.5, .6), (.6, t), (t, .8), (.8, .9), (.9, 1.0), (1.0, 1.01))]
    print("  true Jaccard with the kept copy: " + ", ".join(
        f"[{lo:.2f},{min(hi, 1):.2f}{']' if hi > 1 else ')'}: {c:,}" for lo, hi, c in hist))
    print(f"  REMOVAL PRECISION (Jaccard with the kept copy >= {t}): {rprec:.4f}   (>= 0.6: "
          f"{np.mean(rj >= 0.6) if len(rj) else float('nan'):.4f}, min {rj.min() if len(rj) else float('nan'):.3f})")
    print(f"\n{time.time() - t0:.1f} s")
    ok = rprec >= 0.95 and rec >= 0.95
    print(f"targets (removal precision >= 0.95, recall >= 0.95 at Jaccard >= 0.8): {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
