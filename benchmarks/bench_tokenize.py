"""Tokenize throughput of the product's ingest path against raw tiktoken, same texts, same run.

Baseline: tiktoken's ``encode_ordinary_batch`` with the XGen encoding, one thread (num_threads=1), on the
same documents. Product: ``xgen_data.sources.ingest_item.process_batch`` (JSON decode, validation, tokenization,
Arrow columns; what each ingest item runs per batch) in this process and on a pool of 2 spawned processes. Prints MB/s and tokens/s of each, the
ratio product(1 worker) / raw (target >= 0.85) and product(2 workers) / product(1 worker) (target >= 1.7).

    XGEN_GPT2_BPE=../shared/tokenizer/gpt2.tiktoken python benchmarks/bench_tokenize.py [--mb 60] [--smoke]

``--smoke``: 0.5 MB, one run per variant (seconds; the same code path and lines, no targets judged).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from xgen_data import tokenizer  # noqa: E402
from xgen_data.sources import ingest, ingest_item, readers  # noqa: E402

SHARED = os.path.join(os.environ.get("XGEN_SHARED") or os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                                    "..", "..", "shared"), "corpus")


def load(mb: float) -> list[readers.RawRecord]:
    """Raw records from the shared nl and code corpora, alternating, up to ``mb`` MB of text."""
    recs, size = [], 0
    its = [readers.iter_raw(os.path.join(SHARED, f)) for f in ("nl.jsonl.zst", "code.jsonl.zst")]
    while size < mb * 1e6 and its:
        for it in list(its):
            rec = next(it, None)
            if rec is None:
                its.remove(it)
                continue
            recs.append(rec)
            size += len(rec.payload)
    return recs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=60.0, help="MB of raw JSONL to tokenize")
    ap.add_argument("--repeat", type=int, default=2, help="runs per variant; the best is reported")
    ap.add_argument("--smoke", action="store_true", help="0.5 MB, one run per variant (CI: the code path runs)")
    args = ap.parse_args()
    if args.smoke:
        args.mb, args.repeat = 0.5, 1
    recs = load(args.mb)
    texts = [readers.decode_record(r)["text"] for r in recs]
    n_mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    enc = tokenizer.get_encoding()
    batches = list(ingest_item.batches(recs, ingest.BATCH_DOCS, ingest.BATCH_BYTES))
    print(f"{len(texts):,} documents, {n_mb:.1f} MB of text, {len(batches)} batches")

    def raw() -> int:
        return sum(len(x) for x in enc.encode_ordinary_batch(texts, num_threads=1))

    def product(pool):
        def run() -> int:
            out = pool.map(ingest_item.process_batch, batches) if pool else map(ingest_item.process_batch, batches)
            return sum(b.column("n_tokens").to_numpy().sum() for b, _lines, _errors in out if b is not None)
        return run

    results = {}
    pool = cf.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"), initializer=tokenizer.get_encoding)
    list(pool.map(ingest_item.process_batch, batches[:2]))  # start and warm the workers
    for name, fn in [("raw tiktoken (1 thread)", raw), ("xgen, 1 worker", product(None)), ("xgen, 2 workers", product(pool))]:
        best, n_tok = float("inf"), 0
        for _ in range(args.repeat):
            t = time.perf_counter()
            n_tok = int(fn())
            best = min(best, time.perf_counter() - t)
        results[name] = (best, n_tok)
        print(f"{name:26s} {n_mb / best:7.2f} MB/s  {n_tok / best / 1e6:6.3f} M tokens/s  ({best:.2f} s, {n_tok:,} tokens)")
    pool.shutdown()
    raw_t = results["raw tiktoken (1 thread)"][0]
    one, two = results["xgen, 1 worker"][0], results["xgen, 2 workers"][0]
    assert results["xgen, 1 worker"][1] == results["raw tiktoken (1 thread)"][1], "token counts differ"
    print(f"ratio xgen(1 worker) / raw tiktoken: {raw_t / one:.3f}  (target >= 0.85)")
    print(f"ratio xgen(2 workers) / xgen(1 worker): {one / two:.3f}  (target >= 1.7; {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
