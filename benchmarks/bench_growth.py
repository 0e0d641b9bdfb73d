"""Growth: ingest → dedup → build on 1×, 2×, 4× the shared corpus, time and peak RSS per size.

The k× input is the shared corpus files plus k − 1 perturbed copies of every file, ingested into the same subsets
(seeded: copy ``c`` of a record drops one random span of ~5% of its characters and inserts a marker word at a
random place, and gets the id ``<id>#c<c>``; each copy file is written once and reused by every size), so dedup
has real near-duplicate work and the ingest duplicate-id check sees k times the ids. Each step runs in a fresh process; peak RSS is sampled over the process tree (largest single process and
the sum over workers). Time should grow linearly with size and RSS stay flat.

Usage::

    python benchmarks/bench_growth.py                    # full shared corpus, 1x 2x 4x (long: tens of minutes)
    python benchmarks/bench_growth.py --sample --sizes 1 2 4   # the sample slice (quick check)
    python benchmarks/bench_growth.py --smoke            # CI: the sample slice at 1x only (same steps and lines)
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
SHARED = os.environ.get("XGEN_SHARED") or os.path.join(ROOT, "..", "shared")

from bench_dedup_peer import _child  # noqa: E402  (fresh process + tree peak RSS)


def _records(path: str):
    import zstandard

    if path.endswith(".zst"):
        with open(path, "rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as r:
            for line in io.TextIOWrapper(r, encoding="utf-8"):
                if line.strip():
                    yield json.loads(line)
    else:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)


def perturb(text: str, rng: np.random.Generator, c: int) -> str:
    """Drop one random span of ~5% of the characters and insert a marker word (seeded by ``rng``)."""
    n = len(text)
    if n < 20:
        return text + f" copy{c}"
    span = max(1, n // 20)
    s = int(rng.integers(0, n - span))
    text = text[:s] + text[s + span:]
    p = int(rng.integers(0, len(text)))
    return text[:p] + f" perturbed{c}x{int(rng.integers(0, 1 << 20))} " + text[p:]


def make_copy(path: str, c: int, out_dir: str, seed: int) -> str:
    """Copy ``c`` ≥ 1 of one input file: every record perturbed (:func:`perturb`, seeded by ``seed``, the file
    and ``c``) with the id ``<id>#c<c>``, written once as ``<stem>-c<c>.jsonl.zst`` and reused by every size."""
    import zstandard

    stem = os.path.basename(path).split(".")[0]
    dst = os.path.join(out_dir, f"{stem}-c{c}.jsonl.zst")
    if os.path.exists(dst):
        return dst
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng([seed, c, sum(stem.encode())])
    tmp = dst + ".tmp"
    with open(tmp, "wb") as raw, zstandard.ZstdCompressor(level=1).stream_writer(raw) as w:
        for rec in _records(path):
            rec = {**rec, "id": f"{rec['id']}#c{c}", "text": perturb(rec.get("text") or "", rng, c)}
            w.write((json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8"))
    os.replace(tmp, dst)
    return dst


def make_inputs(files: list[str], k: int, out_dir: str, seed: int) -> list[tuple[str, str]]:
    """k× inputs as ``(path, subset)``: each original file, then its copies 1 … k − 1 (:func:`make_copy`) into
    the same subset (so the ingest duplicate-id check sees k times the ids of each subset)."""
    from xgen_data.sources import ingest

    out = []
    for path in files:
        subset = ingest.default_subset(path)
        out.append((path, subset))
        out += [(make_copy(path, c, out_dir, seed), subset) for c in range(1, k)]
    return out


def stage1_recipe(work: str) -> str:
    """Write the demo recipe cut to its first stage (natural + code, no starcoder subset) and return its path."""
    from xgen_data.mixing import recipe
    text = open(os.path.join(recipe.RECIPES_DIR, "demo.toml"), encoding="utf-8").read()
    cut = text.index("[[stages]]", text.index("[[stages]]") + 1)
    path = os.path.join(work, "demo-stage1.toml")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text[:cut].replace('name = "demo"', 'name = "demo-stage1"', 1))
    recipe.load(path)  # fails here, not after the ingest, if the cut is wrong
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sample", action="store_true", help="grow the shared sample slice instead of the full corpus")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--recipe", default=None, help="recipe for the build step (default: the demo recipe's stage 1; "
                                                  "its stage 2 needs a starcoder subset the bench does not make)")
    ap.add_argument("--work", default=None)
    ap.add_argument("--smoke", action="store_true", help="the sample slice at 1x only (CI: the steps run)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.sample, args.sizes = True, [1]
    base = os.path.join(SHARED, "corpus", "sample") if args.sample else os.path.join(SHARED, "corpus")
    files = [os.path.join(base, f"{n}.jsonl" if args.sample else f"{n}.jsonl.zst") for n in ("nl", "code", "instruct")]
    work = args.work or tempfile.mkdtemp(prefix="xgen-growth-")
    os.makedirs(work, exist_ok=True)
    if args.recipe is None:
        args.recipe = stage1_recipe(work)
    rows = []
    for k in args.sizes:
        d = os.path.join(work, f"x{k}")
        print(f"{k}x: inputs (perturbed copies written once) ...", flush=True)
        inputs = make_inputs(files, k, os.path.join(work, "copies"), args.seed)
        corpus, shards = os.path.join(d, "corpus"), os.path.join(d, "shards")
        res = {"k": k, "input_mb": sum(os.path.getsize(p) for p, _ in inputs) / 1e6}
        steps = {
            "ingest": f"from xgen_data.sources import ingest\n"
                      f"ingest.ingest({corpus!r}, {inputs!r}, workers={args.workers}, progress=False)\n"
                      f"from xgen_data.store.corpus import Corpus\nimport pyarrow.parquet as pq\n"
                      f"extra = {{'docs': sum(pq.ParquetFile(p.path).metadata.num_rows for p in Corpus({corpus!r}).parts())}}",
            "dedup": f"from xgen_data.mixing import defaults\n"
                     f"r = defaults.run_dedup({corpus!r}, workers={args.workers}, progress=False)\n"
                     f"extra = {{'removed': r.removed}}",
            "build": f"from xgen_data.mixing import recipe\nfrom xgen_data.shards import packing\n"
                     f"packing.build_recipe({corpus!r}, recipe.load({args.recipe!r}), {shards!r}, workers={args.workers},"
                     f" progress=False)\nextra = {{}}",
        }
        for name, code in steps.items():
            load0 = os.getloadavg()[0]
            r = _child("import json, time\nt = time.time()\n" + code
                       + "\nprint(json.dumps({'seconds': time.time() - t, **extra}))")
            res[name] = r
            print(f"  {name}: {r['seconds']:.1f} s, peak RSS {r['rss_one_mb']:.0f} MB (one process) / "
                  f"{r['rss_sum_mb']:.0f} MB (tree)" + "".join(f", {a} {b:,}" for a, b in r.items()
                                                          if a in ("docs", "removed"))
                  + f"; load average {load0:.1f} -> {os.getloadavg()[0]:.1f}", flush=True)
        rows.append(res)
    print(f"\n{'size':>5s} {'docs':>9s} {'input MB':>9s} " + " ".join(f"{s + ' s':>9s} {s + ' RSS':>10s}"
                                                              for s in ("ingest", "dedup", "build")))
    for r in rows:
        print(f"{r['k']:>4d}x {r['ingest']['docs']:9,} {r['input_mb']:9.1f} " + " ".join(
            f"{r[s]['seconds']:9.1f} {r[s]['rss_one_mb']:7.0f} MB" for s in ("ingest", "dedup", "build")))
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        f = b["k"] / a["k"]
        print(f"time growth {a['k']}x -> {b['k']}x (x{f:g} data): " + ", ".join(
            f"{s} x{b[s]['seconds'] / a[s]['seconds']:.2f}" for s in ("ingest", "dedup", "build"))
              + "; peak RSS (one process): " + ", ".join(
            f"{s} x{b[s]['rss_one_mb'] / a[s]['rss_one_mb']:.2f}" for s in ("ingest", "dedup", "build")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
