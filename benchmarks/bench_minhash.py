"""MinHash signature throughput: xgen's vectorised path against datasketch's per-document update loop.

Both paths start from the same real documents' text and produce signatures with the same parameters
(``num_perm``, ``seed``, ``ngram``, ``scheme``), in one process, in the same run:

* **xgen**: :class:`xgen_data.attributes.minhash.MinHasher` over batches of 256 documents: the Numba kernels of
  :mod:`xgen_data.attributes.minhash_jit` (words, shingles, SHA-1 and permutations compiled; the default), and the NumPy
  path (``compiled=False``: hashlib per shingle, one NumPy product per chunk).
* **datasketch**: for each document, ``MinHash(num_perm, seed, scheme)`` and ``m.update(s)`` for every
  shingle of :func:`xgen_data.attributes.minhash.shingles` (the same shingles; datasketch's own per-document loop).
* for reference also datasketch's ``update_batch`` (one call per document).

The script checks that every signature is identical and prints documents/s, MB/s and the ratios, then the
cost per shingle × permutation next to the machine's measured multiply-add throughput (so the distance to the
hardware limit is visible). Target: ≥ 30× the ``update`` loop on one core.

Usage::

    python benchmarks/bench_minhash.py                       # the shared sample slice (real documents)
    python benchmarks/bench_minhash.py --corpus /tmp/dd/corpus --docs 3000
    python benchmarks/bench_minhash.py --smoke               # CI: 200 documents of the sample slice
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

from xgen_data.attributes import minhash  # noqa: E402

DEFAULT_SAMPLE = os.path.join(os.environ.get("XGEN_SHARED") or os.path.join(HERE, "..", "..", "shared"),
                              "corpus", "sample")


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


def run_xgen(texts: list[str], args, compiled: bool = True) -> tuple[np.ndarray, float]:
    hasher = minhash.MinHasher(args.num_perm, args.seed, args.ngram, args.scheme, compiled=compiled)
    hasher.signatures(texts[:4])  # compile (or load the cached kernels) outside the timing
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
    ap.add_argument("--smoke", action="store_true", help="200 documents (CI: every path runs, same lines)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.docs = args.docs or 200

    texts = load_texts(args.corpus, args.sample_dir, args.docs, 0)
    mb = sum(len(t.encode("utf-8", "surrogatepass")) for t in texts) / 1e6
    n_sh = sum(len(minhash.shingles(t, args.ngram)) for t in texts)
    print(f"{len(texts):,} documents, {mb:.1f} MB of text, {n_sh:,} shingles; num_perm={args.num_perm} "
          f"seed={args.seed} ngram={args.ngram} scheme={args.scheme}")

    ours, t_ours = run_xgen(texts, args)
    numpy_sig, t_np = run_xgen(texts, args, compiled=False)
    ref, t_ref = run_datasketch(texts, args, batch=False)
    rows = [("xgen MinHasher (Numba kernels)", t_ours), ("xgen NumPy path (compiled=False)", t_np),
            ("datasketch MinHash.update loop", t_ref)]
    same = np.array_equal(ours, ref) and np.array_equal(numpy_sig, ref)
    if not args.no_batch:
        ref_b, t_b = run_datasketch(texts, args, batch=True)
        same = same and np.array_equal(ours, ref_b)
        rows.append(("datasketch MinHash.update_batch", t_b))
    print(f"{'path':34s} {'seconds':>8s} {'docs/s':>9s} {'MB/s':>7s} {'shingles/s':>11s}")
    for name, t in rows:
        print(f"{name:34s} {t:8.2f} {len(texts) / t:9.0f} {mb / t:7.2f} {n_sh / t:11.0f}")
    print(f"identical signatures (all paths, datasketch included): {same}")
    print(f"RATIO xgen (Numba) / datasketch update loop: {t_ref / t_ours:.1f}x   (NumPy path: {t_ref / t_np:.1f}x)")
    if not args.no_batch:
        print(f"ratio xgen (Numba) / datasketch update_batch: {t_b / t_ours:.1f}x")
    # where the time goes, next to the machine's multiply throughput
    from xgen_data.attributes import minhash_jit

    perms = minhash.Permutations.make(args.num_perm, args.seed, args.scheme)
    t0 = time.perf_counter()
    hashes, off, _ = minhash_jit.shingle_hashes(texts, args.ngram, wide=args.scheme == "affine64")
    t_hash = time.perf_counter() - t0
    # the two SHA-1 paths of the shingle kernel side by side (same hashes), and the word split alone
    cp, doff = minhash_jit.codepoints(texts)
    kernels = [("scalar rounds", minhash_jit._shingle_hashes_kernel)]
    if minhash_jit.sha_ni_available():
        kernels.append(("SHA-NI", minhash_jit._shingle_hashes_kernel_ni))
    per = []
    for name, kern in kernels:
        wide = args.scheme == "affine64"
        kern(*minhash_jit.codepoints(["warm up"]), minhash_jit.class_table(), args.ngram, wide)  # compile first
        t0 = time.perf_counter()
        h2, _, _ = kern(cp, doff, minhash_jit.class_table(), args.ngram, wide)
        per.append(f"{name} {1e9 * (time.perf_counter() - t0) / n_sh:.0f} ns")
        same = same and np.array_equal(h2, hashes)
    t0 = time.perf_counter()
    minhash_jit.codepoints(texts)
    t_cp = time.perf_counter() - t0
    sig = np.full((len(texts), args.num_perm), minhash.empty_value(args.scheme), dtype=minhash.sig_dtype(args.scheme))
    fn = minhash_jit._kernels()[1][args.scheme]
    t0 = time.perf_counter()
    fn(hashes, off, perms.a, perms.b, sig)
    t_perm = time.perf_counter() - t0
    cells = n_sh * args.num_perm
    mul64, mul32 = multiply_throughput()
    print(f"cost per shingle x permutation: {1e9 * t_ours / cells:.3f} ns in all "
          f"(words + shingles + SHA-1: {1e9 * t_hash / n_sh:.0f} ns per shingle = {1e9 * t_hash / cells:.3f} ns per "
          f"cell; permutations + minimum: {1e9 * t_perm / cells:.3f} ns per cell)")
    print(f"  SHA-1 path in use: {'SHA-NI (x86 SHA extensions)' if minhash_jit.sha_ni_available() else 'scalar rounds'}; "
          f"words + shingles + SHA-1 per shingle: {', '.join(per)}; NFC + lower + UTF-32 in Python "
          f"{1e9 * t_cp / n_sh:.0f} ns per shingle")
    print(f"machine (one core, Numba loop a*x+b then min over 256 values): 64-bit multiply-add {mul64:.3f} ns, "
          f"32-bit {mul32:.3f} ns per value")
    print(f"identical shingle hashes on both SHA-1 paths and signatures on every path: {same}")
    return 0 if same else 1


def multiply_throughput(n: int = 1 << 16, reps: int = 8) -> tuple[float, float]:
    """Measured ns per ``min(a·x + b)`` update over 256 permutations, 64-bit and 32-bit, one core (Numba)."""
    import numba as nb

    @nb.njit(cache=False, boundscheck=False)
    def loop(x, a, b, out):
        for i in range(len(x)):
            hv = x[i]
            for p in range(len(a)):
                v = a[p] * hv + b[p]
                if v < out[p]:
                    out[p] = v

    res = []
    for dt in (np.uint64, np.uint32):
        rng = np.random.default_rng(0)
        x = rng.integers(0, 1 << 32, n, dtype=np.uint64).astype(dt)
        a = (rng.integers(0, 1 << 31, 256, dtype=np.uint64) * 2 + 1).astype(dt)
        b = rng.integers(0, 1 << 32, 256, dtype=np.uint64).astype(dt)
        out = np.full(256, np.iinfo(dt).max, dtype=dt)
        loop(x[:8], a, b, out)
        t0 = time.perf_counter()
        for _ in range(reps):
            loop(x, a, b, out)
        res.append(1e9 * (time.perf_counter() - t0) / (reps * n * 256))
    return res[0], res[1]


if __name__ == "__main__":
    sys.exit(main())
