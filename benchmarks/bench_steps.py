"""Per-core rates of every data step, and the state each keeps per document (the inputs of docs/scale.md).

Each step runs on ONE worker in a fresh process (``workers=1``: the per-core rate; the steps are per part, so
``n`` workers on ``n`` cores scale it until the disk or the one-process phases bind): ingest (decode, validate,
tokenize, write parts), the ``license`` and ``language`` attribute steps, dedup (phase by phase: signatures per
part, exact groups, bands + verify + cluster, attribute files) and ``mix build`` of the demo recipe's stage 1
(plan + pack). Printed per step: wall seconds, documents/s, input MB/s, tokens/s, peak RSS (one process);
then the bytes per document on disk of the corpus, attribute sets and dedup work files, and of the state in
memory that grows with documents. ``--json PATH`` saves everything.

Usage::

    python benchmarks/bench_steps.py              # the full shared corpus (minutes on one core)
    python benchmarks/bench_steps.py --sample     # the shared sample slice
    python benchmarks/bench_steps.py --smoke      # the sample's natural-language and code files (a quick check)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
SHARED = os.environ.get("XGEN_SHARED") or os.path.join(ROOT, "..", "shared")

from bench_dedup_peer import _child  # noqa: E402  (fresh process + tree peak RSS)
from bench_growth import stage1_recipe  # noqa: E402


def _folder_bytes(path: str, suffix: str = "") -> int:
    total = 0
    for d, _, names in os.walk(path):
        total += sum(os.path.getsize(os.path.join(d, n)) for n in names if n.endswith(suffix))
    return total


def step_code(corpus: str, inputs: list[str], recipe_path: str, shards: str) -> dict[str, str]:
    """The Python of each step, run in a fresh process; each sets ``extra`` (a dict) for the report."""
    return {
        "ingest": f"from xgen_data.sources import ingest\n"
                  f"ingest.ingest({corpus!r}, [(p, None) for p in {inputs!r}], workers=1, progress=False)\n"
                  f"extra = {{}}",
        "license": f"from xgen_data.attributes import filters, licenses\nfrom xgen_data.store.corpus import Corpus\n"
                   f"c = Corpus({corpus!r})\nwith c.lock():\n"
                   f"    filters.compute_license_attributes(c, licenses.default_allow_list())\nextra = {{}}",
        "language": f"from xgen_data.attributes import language_step\nfrom xgen_data.store.corpus import Corpus\n"
                    f"c = Corpus({corpus!r})\nwith c.lock():\n    language_step.compute_language_attributes(c)\n"
                    f"extra = {{}}",
        "dedup": f"from xgen_data.attributes.dedup.run import run_dedup\n"
                 f"r = run_dedup({corpus!r}, workers=1, progress=False)\n"
                 f"extra = {{'phases': r.seconds_by_phase, 'clusters': r.clusters, "
                 f"'clustered_documents': r.clustered_documents, 'near_edges': r.near_edges}}",
        "build": f"from xgen_data.mixing import recipe\nfrom xgen_data.shards import packing\n"
                 f"rep = packing.build_recipe({corpus!r}, recipe.load({recipe_path!r}), {shards!r}, workers=1, "
                 f"progress=False)[1]\nextra = {{'sequences': sum(rep.sequences.values())}}",
    }


def corpus_counts(corpus: str) -> dict:
    import pyarrow.parquet as pq

    sys.path.insert(0, ROOT)
    from xgen_data.store.corpus import Corpus

    docs = toks = text = 0
    for p in Corpus(corpus).parts():
        t = pq.read_table(p.path, columns=["n_tokens", "n_bytes"])
        docs += t.num_rows
        toks += int(t["n_tokens"].to_numpy().sum())
        text += int(t["n_bytes"].to_numpy().sum())
    return {"documents": docs, "tokens": toks, "text_bytes": text, "parts": len(Corpus(corpus).parts())}


#: CPU seconds of the step's process and its worker processes (user + system): on a shared machine the wall
#: time depends on the load, the CPU time much less.
_CPU = ("cpu = sum(getattr(resource.getrusage(w), f) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN) "
        "for f in ('ru_utime', 'ru_stime'))")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sample", action="store_true", help="the shared sample slice instead of the full corpus")
    ap.add_argument("--smoke", action="store_true", help="the sample's natural-language and code files only")
    ap.add_argument("--work", default=None, help="working folder (default: a new temporary one)")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args(argv)
    base = os.path.join(SHARED, "corpus", "sample") if (args.sample or args.smoke) else os.path.join(SHARED, "corpus")
    names = ("nl", "code") if args.smoke else ("nl", "code", "instruct")
    inputs = [os.path.join(base, f"{n}.jsonl" if (args.sample or args.smoke) else f"{n}.jsonl.zst") for n in names]
    work = args.work or tempfile.mkdtemp(prefix="xgen-steps-")
    os.makedirs(work, exist_ok=True)
    corpus, shards = os.path.join(work, "corpus"), os.path.join(work, "shards")
    recipe_path = stage1_recipe(work)
    res: dict = {"inputs": inputs, "input_bytes": sum(os.path.getsize(p) for p in inputs), "cpus": os.cpu_count(),
                 "load_average": os.getloadavg(), "steps": {}}
    for name, code in step_code(corpus, inputs, recipe_path, shards).items():
        r = _child("import json, resource, time\nt = time.time()\n" + code + "\n" + _CPU
                   + "\nprint(json.dumps({'seconds': time.time() - t, 'cpu_seconds': cpu, **extra}))")
        res["steps"][name] = r
        if name == "ingest":
            res["corpus"] = corpus_counts(corpus)
        c = res["corpus"]
        cpu = r["cpu_seconds"]
        print(f"{name:9s} {r['seconds']:8.1f} s wall {cpu:8.1f} s CPU  per CPU-second: "
              f"{c['documents'] / cpu:9,.0f} docs  {c['text_bytes'] / cpu / 1e6:7.2f} MB  {c['tokens'] / cpu:11,.0f} tokens  "
              f"peak RSS {r['rss_one_mb']:6.0f} MB" + (f"  phases {json.dumps({k: round(v, 1) for k, v in r['phases'].items()})}"
                                                      if "phases" in r else ""), flush=True)
    c = res["corpus"]
    n = c["documents"]
    disk = {"parts": _folder_bytes(os.path.join(corpus, "docs")),
            "license attributes": _folder_bytes(os.path.join(corpus, "attributes", "license")),
            "language attributes": _folder_bytes(os.path.join(corpus, "attributes", "language")),
            "dedup attributes": _folder_bytes(os.path.join(corpus, "attributes", "dedup")),
            "dedup signatures (.sig.npy)": _folder_bytes(os.path.join(corpus, "work", "dedup", "sig"), ".npy"),
            "dedup content hashes (sig/*.parquet)": _folder_bytes(os.path.join(corpus, "work", "dedup", "sig"),
                                                                  ".parquet"),
            "dedup band hashes": _folder_bytes(os.path.join(corpus, "work", "dedup", "bands"))}
    res["disk_bytes"] = disk
    print(f"\n{n:,} documents, {c['tokens']:,} tokens, {c['text_bytes'] / 1e6:,.1f} MB of text in {c['parts']} parts")
    for k, v in disk.items():
        print(f"  {k:38s} {v / 1e6:10.1f} MB  {v / max(n, 1):8.1f} B/document")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(res, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
