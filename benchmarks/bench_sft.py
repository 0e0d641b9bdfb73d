"""SFT prepare throughput and packing efficiency on the shared instruct corpus.

Throughput: ``xgen_data.sft.prepare.read_inputs`` (decode JSON, recognise the shape, render SPEC §5, tokenize
with the loss mask) in one process, as examples/s and MB/s of input JSONL per core; baseline in the same run:
tiktoken's ``encode_ordinary_batch`` (one thread) of the same rendered texts, and the ratio product / raw.
Packing: share of non-padding tokens at 2,048 and 8,192 tokens per row with best-fit decreasing (target
>= 95% at 8,192) and with greedy first fit (arrival order) beside it, and the packing times.
Decontamination: MB/s of ``decontam.find`` over the examples' text against 1,000 planted 20-word items,
beside the SPEC §5 normalisation alone (its floor).

    XGEN_GPT2_BPE=../shared/tokenizer/gpt2.tiktoken python benchmarks/bench_sft.py [--smoke]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from xgen_data import tokenizer  # noqa: E402
from xgen_data.sft import decontam, pack, prepare, render, shapes  # noqa: E402
from xgen_data.sources import readers  # noqa: E402

SHARED = os.environ.get("XGEN_SHARED", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                                    "shared"))


def best_of(fn, repeat: int):
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def input_mb(path: str) -> float:
    return sum(len(r.payload) for r in readers.iter_raw(path)) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="the sample slice, one repeat (seconds)")
    ap.add_argument("--repeat", type=int, default=2, help="runs per variant; the best is reported")
    args = ap.parse_args()
    name = "sample/instruct.jsonl" if args.smoke else "instruct.jsonl.zst"
    path = os.path.join(SHARED, "corpus", name)
    repeat = 1 if args.smoke else args.repeat
    opts = prepare.Options(on_error="skip", trim_unanswered=True)
    mb = input_mb(path)
    tokenizer.get_encoding()
    prepare.masking.token_byte_lengths()  # one-time table, not per example
    secs, ex = best_of(lambda: prepare.read_inputs([path], opts, None), repeat)
    n = len(ex.ids)
    print(f"{path}: {ex.sources[0]['records']:,} records, {n:,} examples, {mb:.1f} MB JSONL, "
          f"{sum(map(len, ex.ids)):,} tokens")
    texts = []
    for raw in readers.iter_raw(path):
        try:
            _, convs = shapes.conversations(prepare.json.loads(raw.payload), trim_unanswered=True)
        except shapes.ShapeError:
            continue
        texts += ["".join(p.text for p in render.pieces(c)) for c in convs]
    enc = tokenizer.get_encoding()
    raw_secs, _ = best_of(lambda: enc.encode_ordinary_batch(texts, num_threads=1), repeat)
    print(f"prepare (read, shape, render, tokenize + mask), 1 process: {n / secs:,.0f} examples/s, "
          f"{mb / secs:.2f} MB/s per core ({secs:.2f} s)")
    print(f"baseline tiktoken encode_ordinary_batch, 1 thread:         {n / raw_secs:,.0f} examples/s "
          f"({raw_secs:.2f} s); ratio prepare / raw tokenize = {raw_secs / secs:.2f}")
    lengths = np.fromiter(map(len, ex.ids), np.int64)
    for seq_len in (2048, 8192):
        fit = pack.fit_lengths(lengths, ex.masks, seq_len, "drop")
        row = []
        for label, fn in (("best-fit decreasing", pack.best_fit_decreasing), ("greedy first fit", pack.first_fit)):
            t, rows = best_of(lambda fn=fn, fit=fit, seq_len=seq_len: fn(fit.lengths, seq_len, 0), repeat)
            eff = 1 - pack.padding_share(rows, fit.lengths, seq_len)
            row.append(eff)
            print(f"seq_len {seq_len:>5}: {label:<20} {len(rows):>6,} rows, non-padding {eff:.2%} ({t:.2f} s)"
                  f"{'' if seq_len < 8192 or fn is pack.first_fit else ' [target >= 95%]'}")
        print(f"seq_len {seq_len:>5}: dropped overlong {len(fit.dropped_overlong)}; best-fit / first-fit "
              f"efficiency = {row[0] / row[1]:.3f}")
    with tempfile.TemporaryDirectory() as tmp:
        bench_decontam(texts, repeat, tmp)


def bench_decontam(texts: list[str], repeat: int, tmp: str) -> None:
    """find() over ``texts`` against 1,000 eval items cut from them (20 words each, so some examples match)."""
    import json
    import random

    rng = random.Random(0)
    items = []
    for i in range(1000):
        words = rng.choice(texts).split()
        j = rng.randrange(max(1, len(words) - 20))
        items.append({"id": str(i), "prompt": " ".join(words[j:j + 20]) + " zqx"})
    path = os.path.join(tmp, "planted.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(x, ensure_ascii=False) + "\n" for x in items)
    index = decontam.load_eval_sets([path])
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    norm_secs, _ = best_of(lambda: [decontam.normalize(t) for t in texts], repeat)
    secs, hits = best_of(lambda: sum(decontam.find(t, index) is not None for t in texts), repeat)
    print(f"decontamination: {mb / secs:.2f} MB/s per core ({hits:,} of {len(texts):,} examples match); "
          f"normalisation alone {mb / norm_secs:.2f} MB/s; ratio find / normalise = {norm_secs / secs:.2f}")


if __name__ == "__main__":
    main()
