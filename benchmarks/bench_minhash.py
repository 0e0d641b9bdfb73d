"""MinHash signature throughput: xgen's vectorised path against datasketch's per-document update loop.

Both paths start from the same real documents' text and produce signatures with the same parameters
(``num_perm``, ``seed``, ``ngram``, ``scheme``), in one process, in the same run:

* **xgen**: :class:`xgen_data.minhash.MinHasher` over batches of 256 documents (words → shingles → SHA-1 in
  one tight loop, permutations as one NumPy product per chunk, per-document minimum with ``reduceat``).
* **datasketch**: for each document, ``MinHash(num_perm, seed, scheme)`` and ``m.update(s)`` for every
  shingle of :func:`xgen_data.minhash.shingles` (the same shingles; datasketch's own per-document loop).
* for reference also datasketch's ``update_batch`` (one call per document).

The script checks that every signature is identical and prints documents/s, MB/s and the ratios.
Target (issue #3): xgen ≥ 5× the ``update`` loop.

Usage::

    python benchmarks/bench_minhash.py                       # the shared sample slice (real documents)
    python benchmarks/bench_minhash.py --corpus /tmp/dd/corpus --docs 3000
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import random
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from xgen_data import minhash  # noqa: E402

DEFAULT_SAMPLE = os.path.join(HERE, "..", "..", "shared", "corpus", "sample")


def load_texts(corpus: str | None, sample_dir: str, n_docs: int | None, seed: int) -> list[str]:
    """Real documents: from a corpus's docs parts, or the shared sample JSONL files."""
    if corpus:
        import pyarrow.parquet as pq

        texts = []
        for path in sorted(glob.glob(os.path.join(corpus, "docs", "*", "*.parquet"))):
            texts += pq.read_table(path, columns=["text"]).column("text").to_pylist()
    else:
        texts = []
        for name in ("nl.jsonl", "code.jsonl", "instruct.jsonl"):
            with open(os.path.join(sample_dir, name), encoding="utf-8") as f:
                texts += [json.loads(line)["text"] for line in f if line.strip()]
    if n_docs is not None and n_docs < len(texts):
        texts = random.Random(seed).sample(texts, n_docs)
    return texts


def run_xgen(texts: list[str], args) -> tuple[np.ndarray, float]:
    hasher = minhash.MinHasher(args.num_perm, args.seed, args.ngram, args.scheme)
    t0 = time.perf_counter()
    sigs = [hasher.signatures(texts[i:i + 256])[0] for i in range(0, len(texts), 256)]
    return np.concatenate(sigs), time.perf_counter() - t0


def run_datasketch(texts: list[str], args, batch: bool) -> tuple[np.ndarray, float]:
    from datasketch import MinHash

    out = np.empty((len(texts), args.num_perm), dtype=minhash.sig_dtype(args.scheme))
    t0 = time.perf_counter()
    for i, text in enumerate(texts):
        m = MinHash(num_perm=args.num_perm, seed=args.seed, scheme=args.scheme)
        sh = minhash.shingles(text, args.ngram)
        if batch:
            m.update_batch(sh)
        else:
            for s in sh:
                m.update(s)
        out[i] = m.hashvalues
    return out, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", help="a corpus directory (default: the shared sample slice)")
    ap.add_argument("--sample-dir", default=DEFAULT_SAMPLE)
    ap.add_argument("--docs", type=int, default=None, help="random subset of this many documents")
    ap.add_argument("--num-perm", type=int, default=256)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--ngram", type=int, default=5)
    ap.add_argument("--scheme", default=minhash.DEFAULT_SCHEME, choices=minhash.SCHEMES)
    ap.add_argument("--no-batch", action="store_true", help="skip datasketch's update_batch reference run")
    args = ap.parse_args(argv)

    texts = load_texts(args.corpus, args.sample_dir, args.docs, 0)
    mb = sum(len(t.encode("utf-8", "surrogatepass")) for t in texts) / 1e6
    n_sh = sum(len(minhash.shingles(t, args.ngram)) for t in texts)
    print(f"{len(texts):,} documents, {mb:.1f} MB of text, {n_sh:,} shingles; num_perm={args.num_perm} "
          f"seed={args.seed} ngram={args.ngram} scheme={args.scheme}")

    ours, t_ours = run_xgen(texts, args)
    ref, t_ref = run_datasketch(texts, args, batch=False)
    rows = [("xgen MinHasher (NumPy)", t_ours), ("datasketch MinHash.update loop", t_ref)]
    same = np.array_equal(ours, ref)
    if not args.no_batch:
        ref_b, t_b = run_datasketch(texts, args, batch=True)
        same = same and np.array_equal(ours, ref_b)
        rows.append(("datasketch MinHash.update_batch", t_b))
    print(f"{'path':34s} {'seconds':>8s} {'docs/s':>9s} {'MB/s':>7s} {'shingles/s':>11s}")
    for name, t in rows:
        print(f"{name:34s} {t:8.2f} {len(texts) / t:9.0f} {mb / t:7.2f} {n_sh / t:11.0f}")
    print(f"identical signatures: {same}")
    print(f"ratio xgen / datasketch update loop: {t_ref / t_ours:.1f}x")
    if not args.no_batch:
        print(f"ratio xgen / datasketch update_batch: {t_b / t_ours:.1f}x")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
