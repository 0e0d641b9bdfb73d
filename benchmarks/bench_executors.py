"""ingest -> dedup -> mix build on the local executor and on a local 2-CPU Ray, in one run.

Each executor runs the whole chain from scratch in a fresh process (``--one``), so Ray's start, its workers and
their memory are all counted; the MinHash kernels are compiled into numba's disk cache before either runs. For each: wall time per step and in all, peak RSS of the driver and of the
largest other process (Ray's workers, raylet and GCS; the local executor's pool), the number of processes
seen, the CPU seconds per step of the run's whole process tree and those of every other process on the machine
meanwhile (the wall-time ratio means little when the latter is large: the cores were shared), and the sha256
of every corpus part, dedup attribute file and shard file, which must be byte-identical across executors (printed as ``match``). The ratio is Ray's total wall time over the local executor's, run
in this same invocation (target: at most 1.25 on the same 2 CPUs).

The recipe is ``demo``'s stage 1 (natural and code, dedup at 256 permutations); stage 2 needs the demo's
``starcoder`` subset, which the shared corpus does not have.

Usage::

    python benchmarks/bench_executors.py            # the full shared corpus (nl, code, instruct .jsonl.zst)
    python benchmarks/bench_executors.py --smoke    # the shared sample slice (about a minute)
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from bench_dedup_peer import descendants  # noqa: E402  (every process below one, from /proc)

SHARED = os.environ.get("XGEN_SHARED") or os.path.join(ROOT, "..", "shared")
EXECUTORS = ("local", "ray")
#: Ray's own processes named ``ray::...`` (the task workers are ``ray::<function>`` or ``ray::IDLE``);
#: /proc truncates names to 15 characters.
RAY_SERVICES = ("ray::DashboardA", "ray::RuntimeEnv")
WARM_UP = ("from xgen_data import tokenizer; from xgen_data.attributes import minhash; "
           "tokenizer.encode('warm up'); minhash.MinHasher().signatures(['warm up the compiled kernels'])")


# ------------------------------------------------------------------------------------------------------
# peak RSS of this process and every descendant (Ray's workers are grandchildren: raylet's children)
# ------------------------------------------------------------------------------------------------------
def _peak_kib(pid: int) -> tuple[str, int] | None:
    """``(process name, VmHWM in KiB)``: the process's peak resident set so far."""
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return fields["Name"].strip(), int(fields.get("VmHWM", "0 kB").split()[0])
    except (OSError, KeyError, ValueError):
        return None


class PeakRss:
    """Samples the peak RSS (VmHWM) and the CPU seconds of every descendant of this process every ``interval``
    seconds (a process's CPU seconds as last seen: one that exits between samples loses at most ``interval``)."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval, self.peaks, self.cpu, self._stop = interval, {}, {}, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        for pid in descendants(os.getpid()):
            got = _peak_kib(pid)
            if got:
                self.peaks[pid] = max(self.peaks.get(pid, ("", 0)), got, key=lambda x: x[1])
            seconds = _cpu_seconds(pid)
            if seconds is not None:
                self.cpu[pid] = seconds

    def tree_cpu(self) -> dict[str, float]:
        """CPU seconds (user + system) so far of this process (``driver``), of the processes that run items
        (``workers``: Ray's ``ray::`` task workers, the local executor's pool) and of Ray's own services
        (``services``: GCS, raylet, dashboard and runtime-env agents, log monitor, ...)."""
        self.sample()
        own = resource.getrusage(resource.RUSAGE_SELF)
        out = {"driver": own.ru_utime + own.ru_stime, "workers": 0.0, "services": 0.0}
        ray_run = any(name.startswith("ray::") for name, _ in self.peaks.values())
        for pid, seconds in self.cpu.items():
            name = self.peaks.get(pid, ("", 0))[0]
            worker = name.startswith("ray::") and name not in RAY_SERVICES if ray_run else name != "resource_tracker"
            out["workers" if worker else "services"] += seconds
        return out

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a live process, from ``/proc/<pid>/stat``."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def machine_busy_seconds() -> float:
    """CPU seconds every process of the machine has spent so far (``/proc/stat``: all but idle and iowait)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------------------------------
# one executor, in its own process
# ------------------------------------------------------------------------------------------------------
def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def output_hashes(corpus: str, shards: str) -> dict[str, str]:
    """sha256 of every part, dedup attribute file (generation folder's random name left out) and shard file."""
    out = {os.path.relpath(p, corpus): sha256(p) for p in glob.glob(f"{corpus}/docs/*/*.parquet")}
    for p in glob.glob(f"{corpus}/attributes/dedup/*/g-*/*/*.parquet"):
        params, _, subset, name = p.split(os.sep)[-4:]
        out[f"attributes/dedup/{params}/{subset}/{name}"] = sha256(p)
    for p in glob.glob(f"{shards}/**/*", recursive=True):
        if os.path.isfile(p):
            out["shards/" + os.path.relpath(p, shards)] = sha256(p)
    return dict(sorted(out.items()))


def run_one(executor: str, inputs: list[str], work: str, workers: int) -> dict:
    from xgen_data.mixing import defaults, recipe
    from xgen_data.shards import packing
    from xgen_data.sources import ingest

    demo = recipe.load("demo")
    stage1 = dataclasses.replace(demo, stages=demo.stages[:1])
    corpus, shards = os.path.join(work, "corpus"), os.path.join(work, "shards")
    times: dict[str, float] = {}
    cpu: dict[str, float] = {}
    with PeakRss() as rss:
        busy0, t0 = machine_busy_seconds(), time.time()

        def step(name: str, t: float, c: dict[str, float]) -> None:
            times[name] = time.time() - t
            cpu[name] = {k: v - c[k] for k, v in rss.tree_cpu().items()}

        t, c = time.time(), rss.tree_cpu()
        if executor == "ray":  # one Ray for the three steps, as one `xgen` pipeline process would hold it
            from xgen_data.execute import ray_executor

            ray_executor.start_ray(workers)
        step("ray_start", t, c)
        t, c = time.time(), rss.tree_cpu()
        ingest.ingest(corpus, [(p, None) for p in inputs], workers=workers, progress=False, executor=executor)
        step("ingest", t, c)
        t, c = time.time(), rss.tree_cpu()
        defaults.run_dedup(corpus, workers=workers, progress=False, executor=executor, license_allow=stage1.allow_list())
        step("dedup", t, c)
        t, c = time.time(), rss.tree_cpu()
        packing.build_recipe(corpus, stage1, shards, workers=workers, progress=False, executor=executor)
        step("build", t, c)
        times["total"] = time.time() - t0
        cpu["total"] = {k: sum(cpu[s][k] for s in list(cpu)) for k in ("driver", "workers", "services")}
        # every other process of the machine during the run: a quiet machine shows a few CPU seconds
        cpu["others"] = machine_busy_seconds() - busy0 - sum(cpu["total"].values())
        if executor == "ray":
            import ray

            ray.shutdown()
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    others = sorted(rss.peaks.values(), key=lambda x: -x[1])
    return {"executor": executor, "seconds": times, "cpu_seconds": cpu, "driver_peak_mib": own / 1024,
            "largest_other": [others[0][0], others[0][1] / 1024] if others else None,
            "per_process_mib": [[name, round(k / 1024)] for name, k in others],
            "processes": len(rss.peaks), "others_peak_sum_mib": sum(k for _, k in others) / 1024,
            "hashes": output_hashes(corpus, shards)}


# ------------------------------------------------------------------------------------------------------
# both, side by side
# ------------------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="the shared sample slice instead of the full corpus")
    ap.add_argument("--workers", type=int, default=2, help="local processes / local Ray CPUs (default 2)")
    ap.add_argument("--one", choices=EXECUTORS, help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.smoke:
        inputs = [os.path.join(SHARED, "corpus", "sample", f) for f in ("nl.jsonl", "code.jsonl", "instruct.jsonl")]
    else:
        inputs = [os.path.join(SHARED, "corpus", f) for f in ("nl.jsonl.zst", "code.jsonl.zst", "instruct.jsonl.zst")]
    if args.one:
        print(json.dumps(run_one(args.one, inputs, args.work, args.workers)))
        return
    env = {**os.environ, "PYTHONPATH": ROOT, "RAY_USAGE_STATS_ENABLED": "0"}
    # compile (or load) the MinHash kernels and the tokenizer once before timing: numba caches the kernels on
    # disk, so without this the first executor measured pays the compilation and the second does not
    subprocess.run([sys.executable, "-c", WARM_UP], check=True, env=env)
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-executors-") as tmp:
        for executor in EXECUTORS:
            work = os.path.join(tmp, executor)
            cmd = [sys.executable, os.path.abspath(__file__), "--one", executor, "--work", work,
                   "--workers", str(args.workers)] + (["--smoke"] if args.smoke else [])
            done = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if done.returncode:
                sys.exit(f"{executor} failed:\n{done.stderr[-4000:]}")
            results[executor] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"inputs: {', '.join(os.path.basename(p) for p in inputs)}; {args.workers} workers; "
          f"{os.cpu_count()} CPUs on this machine")
    print(f"{'executor':8}  {'ray start':>9}  {'ingest':>7}  {'dedup':>7}  {'build':>7}  {'total':>7}  "
          f"{'driver MiB':>10}  {'largest other MiB':>24}  {'procs':>5}")
    for ex, r in results.items():
        s, other = r["seconds"], r["largest_other"] or ["-", 0]
        print(f"{ex:8}  {s['ray_start']:9.1f}  {s['ingest']:7.1f}  {s['dedup']:7.1f}  {s['build']:7.1f}  "
              f"{s['total']:7.1f}  {r['driver_peak_mib']:10.0f}  {other[0][:14]:>14} {other[1]:9.0f}  "
              f"{r['processes']:5d}")
    print("CPU seconds of each run's process tree (driver, workers, Ray's services), and of every other process "
          "on the machine meanwhile (a quiet machine: a few seconds):")
    for ex, r in results.items():
        c = {k: v if k == "others" else sum(v.values()) for k, v in r["cpu_seconds"].items()}
        print(f"{ex:8}  {c['ray_start']:9.1f}  {c['ingest']:7.1f}  {c['dedup']:7.1f}  {c['build']:7.1f}  "
              f"{c['total']:7.1f}  others {c['others']:.1f}")
    for ex, r in results.items():
        print(f"{ex} CPU seconds, driver / workers / services: " + "; ".join(
            f"{step} {v['driver']:.1f} / {v['workers']:.1f} / {v['services']:.1f}"
            for step, v in r["cpu_seconds"].items() if step != "others"))
    for ex, r in results.items():
        shown = ", ".join(f"{name} {mib}" for name, mib in r["per_process_mib"][:8])
        print(f"{ex} peak RSS MiB per process (driver {r['driver_peak_mib']:.0f}): {shown}")
    local, ray = results["local"], results["ray"]
    ray_total, ray_start, local_total = ray["seconds"]["total"], ray["seconds"]["ray_start"], local["seconds"]["total"]
    print(f"ray / local wall time: {ray_total / local_total:.2f}x "
          f"(without Ray's start: {(ray_total - ray_start) / local_total:.2f}x)")
    same = local["hashes"] == ray["hashes"]
    kinds = {k: sum(1 for p in local["hashes"] if p.startswith(k)) for k in ("docs/", "attributes/", "shards/")}
    print(f"outputs: {len(local['hashes'])} files ({kinds['docs/']} parts, {kinds['attributes/']} dedup attribute "
          f"files, {kinds['shards/']} shard files); sha256 {'match' if same else 'DIFFER'}")
    if not same:
        diff = sorted(k for k in set(local["hashes"]) | set(ray["hashes"])
                      if local["hashes"].get(k) != ray["hashes"].get(k))
        sys.exit(f"outputs differ: {', '.join(diff[:10])}")


if __name__ == "__main__":
    main()
