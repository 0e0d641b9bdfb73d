"""``xgen export shards`` and ``xgen card``: MB/s per core of each export target, peak RSS against the shards'
size, and the card's wall time.

The shards are built from the shared corpus (``--smoke``: its sample slice) with the demo recipe's budgets
(code taken from ``code``, as in the tests); then copies of that shards folder at 1×, 4× and 16× its rows
(every shard file repeated k times, manifest and checksums rewritten) show whether memory stays flat as the
shards grow. Each export runs in a fresh process; its time is compared with a baseline in the same process:
reading every shard file, hashing it with SHA-256 and writing a copy (what any export must at least do).
MB/s per core = shard bytes read / seconds (an export is one process, one core). ``xgen card`` is timed on the
corpus and 1× shards (target on the full corpus: under 30 s).

Usage::

    python benchmarks/bench_export.py            # full shared corpus (ingest takes minutes on 2 cores)
    python benchmarks/bench_export.py --smoke    # the sample slice, 1× and 4× (seconds)
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)
SHARED = os.environ.get("XGEN_SHARED") or os.path.join(ROOT, "..", "shared")
os.environ.setdefault("XGEN_GPT2_BPE", os.path.join(SHARED, "tokenizer", "gpt2.tiktoken"))

from bench_dedup_peer import _child  # noqa: E402  (fresh process + tree peak RSS)

TARGETS = ("megatron", "mds", "litdata", "hf")


def build(corpus: str, shards: str, smoke: bool) -> None:
    """Ingest the shared corpus (or sample), apply the filters and pack the demo budgets into ``shards``."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from conftest import demo_no_dedup  # the demo recipe with stage 2's code from `code` (no starcoder subset)

    from xgen_data.attributes import filters
    from xgen_data.shards import packing
    from xgen_data.sources import ingest

    folder = os.path.join(SHARED, "corpus", "sample") if smoke else os.path.join(SHARED, "corpus")
    ext = ".jsonl" if smoke else ".jsonl.zst"
    inputs = [(os.path.join(folder, f"{n}{ext}"), None) for n in ("nl", "code", "instruct")]
    ingest.ingest(corpus, inputs, workers=2, progress=False)
    filters.run_filters(corpus)
    packing.build(corpus, demo_no_dedup(), shards, progress=False)


def scaled(src: str, dst: str, k: int) -> str:
    """A valid shards folder with every shard file of ``src`` repeated ``k`` times (manifest rewritten)."""
    from xgen_data.shards import shard_format
    from xgen_data.store import fsutil

    manifest = shard_format.read_manifest(src)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.bin", "manifest.json"))
    for e in manifest["shards"]:
        data = open(os.path.join(src, e["path"]), "rb").read()
        with open(os.path.join(dst, e["path"]), "wb") as f:
            for _ in range(k):
                f.write(data)
        e["n_sequences"] *= k
        e["sha256"] = fsutil.sha256_file(os.path.join(dst, e["path"]))
        e["tokens_per_subset"] = {s: v * k for s, v in e["tokens_per_subset"].items()}
        e["tokens_per_source"] = {s: v * k for s, v in e["tokens_per_source"].items()}
    shard_format.write_manifest(dst, manifest)
    return dst


BASELINE = """
import hashlib, os, time
from xgen_data.shards import shard_format
def copy_and_hash(src, dst):
    m = shard_format.read_manifest(src)
    for e in m["shards"]:
        os.makedirs(os.path.dirname(os.path.join(dst, e["path"])), exist_ok=True)
        h = hashlib.sha256()
        with open(os.path.join(src, e["path"]), "rb") as r, open(os.path.join(dst, e["path"]), "wb") as w:
            while block := r.read(1 << 20):
                h.update(block); w.write(block)
"""


def measure(shards: str, target: str, out: str) -> dict:
    """Export ``shards`` to ``out`` in a fresh process, and the copy-and-hash baseline in the same process."""
    return _child(BASELINE + f"""
import json, resource
from xgen_data.interop import export
from xgen_data.interop.source import check_shards
src, out = {shards!r}, {out!r}
nbytes = sum(e["n_sequences"] * e["seq_len"] * 2 for e in check_shards(src)["shards"])
t = time.perf_counter(); copy_and_hash(src, out + ".baseline"); base = time.perf_counter() - t
t = time.perf_counter(); export.export_shards(src, out, {target!r}); s = time.perf_counter() - t
print(json.dumps({{"seconds": s, "baseline_seconds": base, "shard_mb": nbytes / 1e6}}))""")


def card_time(shards: str, corpus: str, out: str) -> dict:
    return _child(f"""
import json, time
from xgen_data.interop import card
t = time.perf_counter(); card.write_card({shards!r}, {out!r}, corpus_dir={corpus!r}, ai_act_summary=True)
print(json.dumps({{"seconds": time.perf_counter() - t}}))""")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="the sample slice and scales 1, 4 (seconds)")
    ap.add_argument("--scales", type=int, nargs="+", default=None, help="row multiples of the shards (default 1 4 16)")
    ap.add_argument("--targets", nargs="+", default=list(TARGETS), choices=TARGETS, help="export targets to time")
    ap.add_argument("--workdir", default=None, help="keep the corpus and shards here (default: a temp folder)")
    args = ap.parse_args()
    scales = args.scales or ([1, 4] if args.smoke else [1, 4, 16])
    work = args.workdir or tempfile.mkdtemp(prefix="bench-export-")
    corpus, shards = os.path.join(work, "corpus"), os.path.join(work, "shards")
    if not os.path.isdir(shards):
        build(corpus, shards, args.smoke)
    print(f"{'target':9} {'scale':>5} {'shard MB':>9} {'seconds':>8} {'MB/s/core':>9} {'vs copy+sha256':>14} "
          f"{'peak RSS MB':>11}")
    for k in scales:
        src = shards if k == 1 else scaled(shards, os.path.join(work, f"shards-x{k}"), k)
        for target in args.targets:
            out = os.path.join(work, f"out-{target}-x{k}")
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(out + ".baseline", ignore_errors=True)
            r = measure(src, target, out)
            print(f"{target:9} {k:>5} {r['shard_mb']:>9.1f} {r['seconds']:>8.2f} {r['shard_mb'] / r['seconds']:>9.1f} "
                  f"{r['seconds'] / r['baseline_seconds']:>13.2f}x {r['rss_one_mb']:>11.0f}", flush=True)
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(out + ".baseline", ignore_errors=True)
        if k != 1:
            shutil.rmtree(src, ignore_errors=True)
    out = os.path.join(work, "card")
    shutil.rmtree(out, ignore_errors=True)
    r = card_time(shards, corpus, out)
    print(f"xgen card --corpus --ai-act: {r['seconds']:.2f} s wall, peak RSS {r['rss_one_mb']:.0f} MB")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
