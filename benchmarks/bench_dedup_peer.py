"""Near dedup side by side with a peer: datatrove 0.10.1's four MinHash stages against ``xgen dedup``.

Both run in this one invocation, on the same documents (the shared corpus files, or the sample slice), with
the same number of worker processes, parameters matched as closely as datatrove's API allows (the mapping is
printed). For each: wall time, documents/s and MB/s per core, peak RSS (largest single process), documents
removed, and removal precision / recall against exact Jaccard on our shingles (the same yardstick for both):

* **removal precision**: share of removed documents (a random ``--check`` of them) whose true Jaccard with
  the copy their cluster keeps is ≥ 0.7 (datatrove keeps each cluster's root, ours the recipe's choice);
* **recall**: among ``--docs`` random documents, the share of pairs at true Jaccard ≥ 0.8 of which at least
  one document is removed.

datatrove is installed in its own virtual environment (``--peer-venv``, created when missing): the
``processing`` extra, orjson, and spacy (its English word tokenizer). Our side runs ``xgen ingest`` (timed
apart: it tokenizes, which datatrove does not) and then ``run_dedup`` from scratch, in a fresh process each.

Usage::

    python benchmarks/bench_dedup_peer.py                  # the full shared corpus (nl, code, instruct)
    python benchmarks/bench_dedup_peer.py --sample         # the shared sample slice (quick)
    python benchmarks/bench_dedup_peer.py --smoke          # CI: our side on the sample slice, no peer install
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SHARED = os.environ.get("XGEN_SHARED") or os.path.join(ROOT, "..", "shared")
PEER = "datatrove[processing]==0.10.1"
PEER_EXTRA = ["orjson", "spacy", "zstandard"]  # zstandard: fsspec reads the .jsonl.zst inputs with it
THRESHOLD = 0.7
BANDS, ROWS = 25, 10  # ours for 0.7 / 256 permutations (datasketch's optimum); datatrove takes them as given


# ------------------------------------------------------------------------------------------------------
# datatrove side (runs inside the peer venv: imports nothing of xgen)
# ------------------------------------------------------------------------------------------------------
def run_datatrove(inputs: list[str], work: str, workers: int) -> dict:
    import resource

    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashing import HashConfig
    from datatrove.utils.typeshelper import Languages

    cfg = MinhashConfig(n_grams=5, num_buckets=BANDS, hashes_per_bucket=ROWS, seed=1,
                        hash_config=HashConfig(precision=32, hash_fc="sha1"))
    folder = os.path.dirname(inputs[0])
    names = [os.path.basename(p) for p in inputs]
    tasks = len(inputs)

    os.makedirs(work, exist_ok=True)
    paths = _paths_file(work, names)

    def reader():
        # metadata["file_path"] names the input file
        return JsonlReader(folder, paths_file=paths, compression="zstd" if names[0].endswith(".zst") else None)

    stages = [
        ("1 signatures", [reader(), MinhashDedupSignature(output_folder=f"{work}/signatures", config=cfg,
                                                           language=Languages.english)], tasks),
        ("2 buckets", [MinhashDedupBuckets(input_folder=f"{work}/signatures", output_folder=f"{work}/buckets",
                                           config=cfg)], cfg.num_buckets),
        ("3 cluster", [MinhashDedupCluster(input_folder=f"{work}/buckets", output_folder=f"{work}/remove_ids",
                                           config=cfg, save_cluster_id=True)], 1),
        ("4 filter", [reader(), MinhashDedupFilter(input_folder=f"{work}/remove_ids",
                                                   exclusion_writer=JsonlWriter(f"{work}/removed", compression=None),
                                                   load_cluster_ids=True),
                      JsonlWriter(f"{work}/kept", compression=None)], tasks),
    ]
    out = {"stages": {}}
    t_all = time.time()
    for name, pipeline, n_tasks in stages:
        t = time.time()
        LocalPipelineExecutor(pipeline=pipeline, tasks=n_tasks, workers=min(workers, n_tasks),
                              logging_dir=f"{work}/logs/{name.split()[1]}").run()
        out["stages"][name] = time.time() - t
    out["seconds"] = time.time() - t_all
    out["rss_self_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["rss_children_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return out


def _paths_file(work: str, names: list[str]) -> str:
    path = os.path.join(work, "inputs.txt")
    with open(path, "w") as f:
        f.write("\n".join(names) + "\n")
    return path


# ------------------------------------------------------------------------------------------------------
# our side and the comparison (our venv)
# ------------------------------------------------------------------------------------------------------
def ensure_peer_venv(venv: str) -> str:
    """The peer venv's python; created with ``PEER`` + ``PEER_EXTRA`` when missing. Exits with what failed."""
    py = os.path.join(venv, "bin", "python")
    probe = [py, "-c", "import datatrove, orjson, spacy, zstandard"]
    if os.path.exists(py) and subprocess.run(probe, capture_output=True).returncode == 0:
        return py
    print(f"creating {venv}: pip install {PEER} {' '.join(PEER_EXTRA)}", flush=True)
    subprocess.run(["python3", "-m", "venv", venv], check=True)
    r = subprocess.run([os.path.join(venv, "bin", "pip"), "install", "-q", PEER, *PEER_EXTRA],
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"could not install the peer: pip install {PEER} {' '.join(PEER_EXTRA)} failed:\n{r.stderr[-3000:]}")
    return py


def descendants(root: int) -> list[int]:
    """Process ids of every descendant of ``root`` (children, grandchildren, ...), read from ``/proc``."""
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    out, frontier = [], [root]
    while frontier:
        frontier = [p for p, pp in parent.items() if pp in frontier]
        out += frontier
    return out


class TreeRSS:
    """Peak RSS of a process tree, sampled from /proc every ``interval`` s: the largest single process and the
    largest sum over the tree (datatrove's workers hang off a forkserver, so ``RUSAGE_CHILDREN`` misses them)."""

    def __init__(self, root_pid: int, interval: float = 0.2):
        import threading

        self.root, self.interval, self.peak_one, self.peak_sum = root_pid, interval, 0.0, 0.0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _tree(self) -> list[int]:
        return [self.root] + descendants(self.root)

    def _run(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE") / 1e6
        while not self._stop.is_set():
            rss = []
            for pid in self._tree():
                try:
                    with open(f"/proc/{pid}/statm") as f:
                        rss.append(int(f.read().split()[1]) * page)
                except (OSError, IndexError, ValueError):
                    pass
            if rss:
                self.peak_one, self.peak_sum = max(self.peak_one, max(rss)), max(self.peak_sum, sum(rss))
            self._stop.wait(self.interval)

    def stop(self) -> "TreeRSS":
        self._stop.set()
        self._t.join()
        return self


def _run_measured(cmd: list[str], **kw) -> tuple[str, TreeRSS]:
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    mon = TreeRSS(p.pid)
    out, err = p.communicate()
    mon.stop()
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd[:3])} ... failed:\n{err[-4000:]}")
    return out, mon


def _child(code: str) -> dict:
    """Run ``code`` in a fresh Python of this venv; it prints one JSON line last. Adds the tree's peak RSS."""
    out, mon = _run_measured([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
    res = json.loads(out.strip().splitlines()[-1])
    res["rss_one_mb"], res["rss_sum_mb"] = mon.peak_one, mon.peak_sum
    return res


def run_ours(inputs: list[str], corpus: str, workers: int) -> tuple[dict, dict]:
    """``xgen ingest`` (skipped when ``corpus`` exists: a re-run) and ``run_dedup`` from scratch (work files removed)."""
    import shutil

    if os.path.isdir(corpus):
        shutil.rmtree(os.path.join(corpus, "work", "dedup"), ignore_errors=True)
        ing = {"seconds": float("nan")}
    else:
        ing = _ingest(inputs, corpus, workers)
    return ing, _dedup(corpus, workers)


def _ingest(inputs: list[str], corpus: str, workers: int) -> dict:
    return _child(f"""
import json, time, resource
from xgen_data.sources import ingest
t = time.time()
ingest.ingest({corpus!r}, [(p, None) for p in {inputs!r}], workers={workers}, progress=False)
print(json.dumps({{"seconds": time.time() - t}}))""")


def _dedup(corpus: str, workers: int) -> dict:
    return _child(f"""
import json, time, resource
from xgen_data.mixing import defaults
t = time.time()
rep = defaults.run_dedup({corpus!r}, workers={workers}, progress=False)
s = time.time() - t
print(json.dumps({{"seconds": s, "phases": rep.seconds_by_phase, "removed": rep.removed,
                   "by_reason": rep.removed_by_reason, "documents": rep.documents,
                   "rss_self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                   "rss_children_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}}))""")


def _read_jsonl_dir(folder: str) -> list[dict]:
    out = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        with open(os.path.join(folder, name), encoding="utf-8") as f:
            out += [json.loads(line) for line in f if line.strip()]
    return out


def quality(corpus: str, dt_work: str, n_docs: int, n_check: int, seed: int) -> dict:
    """Removal precision and recall of both sides against exact Jaccard on our shingles."""
    import numpy as np

    sys.path.insert(0, HERE)
    import eval_dedup_quality as ev

    from xgen_data.sources import ingest
    from xgen_data.stats import sql

    con = sql.connect(corpus, quiet=True)
    docs = con.execute("SELECT subset, id, text, dup_reason, dup_of, dup_of_subset FROM documents "
                       "ORDER BY subset, part, row").fetchall()
    con.close()
    key = [(d[0], d[1]) for d in docs]
    text = {k: d[2] for k, d in zip(key, docs)}
    ours_removed = {k: (d[5], d[4]) for k, d in zip(key, docs) if d[3] is not None}

    def subset_of(md: dict) -> str:
        return ingest.default_subset(md.get("file_path", ""))

    removed = _read_jsonl_dir(os.path.join(dt_work, "removed"))
    kept = _read_jsonl_dir(os.path.join(dt_work, "kept"))
    root_of = {}
    for d in kept:
        c = d["metadata"].get("minhash_cluster_id", -1)
        if c != -1:
            root_of[c] = (subset_of(d["metadata"]), d["id"])
    dt_removed = {(subset_of(d["metadata"]), d["id"]): root_of.get(d["metadata"].get("minhash_cluster_id"))
                  for d in removed}
    rng = np.random.default_rng(seed)

    from xgen_data.attributes.minhash import content_hash

    def removal_precision(rem: dict) -> tuple[float, int, float, int]:
        """(precision over all removed, n, precision over removed whose text differs from the kept copy, n)."""
        items = sorted((k, v) for k, v in rem.items() if v is not None and k in text and v in text)
        if n_check and len(items) > n_check:
            items = [items[i] for i in sorted(rng.choice(len(items), n_check, replace=False))]
        a = ev.shingle_sets([text[k] for k, _ in items], 5)
        b = ev.shingle_sets([text[v] for _, v in items], 5)
        ok = [(len(x) and len(y)) for x, y in zip(a, b)]
        j = np.array([ev.jaccard(x, y) for x, y, o in zip(a, b, ok) if o])
        near = np.array([content_hash(text[k]) != content_hash(text[v]) for (k, v), o in zip(items, ok) if o],
                        dtype=bool)
        p_all = float(np.mean(j >= THRESHOLD)) if len(j) else float("nan")
        p_near = float(np.mean(j[near] >= THRESHOLD)) if near.any() else float("nan")
        return p_all, len(j), p_near, int(near.sum())

    sample = sorted(rng.choice(len(key), size=min(n_docs, len(key)), replace=False).tolist())
    sets = ev.shingle_sets([text[key[i]] for i in sample], 5)
    truth = ev.similar_pairs(sets, 0.8)

    def recall(rem: dict) -> float:
        hit = [key[sample[a]] in rem or key[sample[b]] in rem for a, b in truth]
        return float(np.mean(hit)) if hit else float("nan")

    op, on, onp, onn = removal_precision(ours_removed)
    dp, dn, dnp, dnn = removal_precision(dt_removed)
    return {"ours": {"removal_precision": op, "checked": on, "near_precision": onp, "near_checked": onn,
                     "recall": recall(ours_removed)},
            "datatrove": {"removal_precision": dp, "checked": dn, "near_precision": dnp, "near_checked": dnn,
                          "recall": recall(dt_removed),
                          "removed": len(removed), "unmatched": sum(1 for k in dt_removed if k not in text)},
            "true_pairs": len(truth), "sample": len(sample)}


def smoke(inputs: list[str], work: str, workers: int) -> int:
    """``--smoke``: our side (ingest, then dedup from scratch, measured as in a full run); no peer, no ratio."""
    ing, ours = run_ours(inputs, os.path.join(work, "corpus"), workers)
    n, s = ours["documents"], ours["seconds"]
    print(f"{'xgen dedup':12s} {s:8.1f} s {n / s:9.0f} docs/s, peak RSS {ours['rss_one_mb']:.0f} / "
          f"{ours['rss_sum_mb']:.0f} MB, removed {ours['removed']:,}")
    print("  xgen phases: " + ", ".join(f"{k} {v:.1f}s" for k, v in ours["phases"].items())
          + f"; removed {ours['by_reason']}; ingest (tokenizing, not dedup) {ing['seconds']:.1f}s")
    print("datatrove: not run in --smoke (its venv is installed on first use); RATIO not measured")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sample", action="store_true", help="the shared sample slice instead of the full corpus")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--peer-venv", default=os.path.join(tempfile.gettempdir(), "xgen-peer-datatrove"))
    ap.add_argument("--work", default=None, help="scratch directory (default: a new temp dir)")
    ap.add_argument("--docs", type=int, default=30000, help="random documents for recall")
    ap.add_argument("--check", type=int, default=5000, help="removed documents checked for removal precision")
    ap.add_argument("--smoke", action="store_true",
                    help="our side only, on the sample slice (no peer venv to install; seconds, for CI)")
    ap.add_argument("--run-datatrove", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.sample = args.sample or args.smoke
    if args.run_datatrove:  # inside the peer venv
        work, *inputs = args.run_datatrove
        print(json.dumps(run_datatrove(inputs, work, args.workers)))
        return 0

    if args.sample:
        inputs = [os.path.join(SHARED, "corpus", "sample", f"{n}.jsonl") for n in ("nl", "code", "instruct")]
    else:
        inputs = [os.path.join(SHARED, "corpus", f"{n}.jsonl.zst") for n in ("nl", "code", "instruct")]
    for p in inputs:
        if not os.path.isfile(p):
            sys.exit(f"{p}: no such input file (set XGEN_SHARED)")
    work = args.work or tempfile.mkdtemp(prefix="xgen-peer-")
    os.makedirs(work, exist_ok=True)
    if args.smoke:
        return smoke(inputs, work, args.workers)
    py = ensure_peer_venv(args.peer_venv)
    ver = subprocess.run([py, "-c", "import importlib.metadata as m; print(m.version('datatrove'), "
                          "m.version('spacy'), m.version('orjson'))"], capture_output=True, text=True).stdout.split()
    print(f"peer: datatrove {ver[0]} (spacy {ver[1]}, orjson {ver[2]}) in {args.peer_venv}")
    print("parameter mapping (xgen -> datatrove):")
    for ours, theirs in (("5-word shingles", "MinhashConfig.n_grams=5"),
                         (f"LSH {BANDS} bands x {ROWS} rows (threshold 0.7, 256 perms; 250 used)",
                          f"num_buckets={BANDS}, hashes_per_bucket={ROWS} (250 hashes)"),
                         ("permutation seed 1", "seed=1"),
                         ("SHA-1 32-bit shingle hash, affine32 permutations", "HashConfig(precision=32, hash_fc='sha1')"),
                         ("words: NFC, lower-cased, Unicode letter/digit runs",
                          "TextNormConfig defaults (lowercase, no punctuation, no diacritics, numbers "
                          "normalised) + spacy English word tokenizer"),
                         ("exact dedup by content hash + near; clusters: verified cliques",
                          "near only (identical texts share every bucket); clusters: union-find components"),
                         (f"--workers {args.workers} processes", f"LocalPipelineExecutor(workers={args.workers})")):
        print(f"  {ours:62s} -> {theirs}")
    mb = sum(os.path.getsize(p) for p in inputs) / 1e6

    corpus = os.path.join(work, "corpus")
    print("running xgen (ingest, then dedup from scratch) ...", flush=True)
    ing, ours = run_ours(inputs, corpus, args.workers)
    dt_work = os.path.join(work, "datatrove")
    print("running datatrove (4 stages) ...", flush=True)
    t = time.time()
    out, mon = _run_measured([py, os.path.abspath(__file__), "--workers", str(args.workers), "--run-datatrove",
                              dt_work, *inputs])
    theirs = json.loads(out.strip().splitlines()[-1])
    theirs["wall_with_start"] = time.time() - t
    theirs["rss_one_mb"], theirs["rss_sum_mb"] = mon.peak_one, mon.peak_sum

    import pyarrow.parquet as pq  # noqa: F401  (our venv)

    from xgen_data.store.corpus import Corpus

    text_mb = sum(pq.ParquetFile(p.path).metadata.num_rows and
                  pq.read_table(p.path, columns=["n_bytes"]).column("n_bytes").to_numpy().sum()
                  for p in Corpus(corpus).parts()) / 1e6
    n = ours["documents"]
    q = quality(corpus, dt_work, args.docs, args.check, 0)
    print(f"\n{n:,} documents, {text_mb:.1f} MB of text ({mb:.1f} MB input files), {args.workers} workers")
    print(f"{'':12s} {'wall s':>8s} {'docs/s':>9s} {'MB/s/core':>10s} {'peak RSS MB (1 proc / all)':>27s} "
          f"{'removed':>9s} {'rem. prec.':>10s} {'recall':>7s}")
    for name, s, res, rem, qq in (("xgen dedup", ours["seconds"], ours, ours["removed"], q["ours"]),
                                  ("datatrove", theirs["seconds"], theirs, q["datatrove"]["removed"], q["datatrove"])):
        rss = f"{res['rss_one_mb']:.0f} / {res['rss_sum_mb']:.0f}"
        print(f"{name:12s} {s:8.1f} {n / s:9.0f} {text_mb / s / args.workers:10.2f} {rss:>27s} {rem:9,} "
              f"{qq['removal_precision']:10.4f} {qq['recall']:7.4f}")
    print("  xgen phases: " + ", ".join(f"{k} {v:.1f}s" for k, v in ours["phases"].items())
          + f"; removed {ours['by_reason']}; ingest (tokenizing, not dedup) {ing['seconds']:.1f}s")
    print("  datatrove stages: " + ", ".join(f"{k} {v:.1f}s" for k, v in theirs["stages"].items()))
    print(f"  removal precision over removed documents whose text differs from the kept copy (near, not exact): "
          f"xgen {q['ours']['near_precision']:.4f} ({q['ours']['near_checked']:,}), datatrove "
          f"{q['datatrove']['near_precision']:.4f} ({q['datatrove']['near_checked']:,})")
    print(f"  quality: {q['sample']:,} sampled documents, {q['true_pairs']:,} pairs at Jaccard >= 0.8; removal "
          f"precision on {q['ours']['checked']:,} (xgen) / {q['datatrove']['checked']:,} (datatrove) removed documents"
          + (f"; {q['datatrove']['unmatched']} datatrove documents not matched by (subset, id)"
             if q["datatrove"]["unmatched"] else ""))
    ratio = theirs["seconds"] / ours["seconds"]
    print(f"\nRATIO datatrove time / xgen time: {ratio:.1f}x (target >= 25x at equal or better precision and recall)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
