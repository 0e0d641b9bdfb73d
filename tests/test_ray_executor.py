"""The Ray executor: the step contract on Ray, failures retried then named, and the same
bytes on Ray as on the local executor for ingest and dedup (sample corpus), a killed Ray run resuming.

One local Ray (2 CPUs, a small object store) is shared by the module: Ray takes seconds to start. The
two tests on the sample corpus are marked slow (they run in CI's second step). Ray is
the optional extra ``xgen[ray]``: the module is skipped without it, unless ``XGEN_REQUIRE_RAY=1`` (CI)."""
from __future__ import annotations

import glob
import hashlib
import json
import os
import subprocess
import sys

import pytest
from conftest import SAMPLE, demo_code_only

from xgen_data.execute import executors
from xgen_data.execute.contract import ItemError, ItemResult, WorkItem, run_step
from xgen_data.execute.local import LocalExecutor

if os.environ.get("XGEN_REQUIRE_RAY") != "1":
    pytest.importorskip("ray")
from xgen_data.execute import ray_executor  # noqa: E402  (after the optional-extra check)
from xgen_data.mixing import defaults

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_FILES = [os.path.join(SAMPLE, f) for f in ("nl.jsonl", "code.jsonl", "instruct.jsonl")]


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray of 2 CPUs and a 128 MiB object store for the module; yields its GCS address."""
    import ray
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # tests/ is not on the workers' path
    started = ray_executor.start_ray(2, object_store_bytes=128 << 20)
    yield ray.get_runtime_context().gcs_address
    if started:
        ray.shutdown()


# -- a toy step on the contract ------------------------------------------------------------------------
def square_to_file(folder: str, n: int, seed: int) -> ItemResult:
    """One item: write ``(n * n + seed)`` to ``folder/<n>.tmp``; pure in its arguments."""
    path = os.path.join(folder, f"{n}.tmp")
    with open(path, "w") as f:
        f.write(str(n * n + seed))
    return ItemResult(str(n), value=path, documents=1, bytes=os.path.getsize(path))


class ToyStep:
    name = "toy"
    item_fn = staticmethod(square_to_file)

    def __init__(self, folder: str, n: int, seed: int = 7, reverse: bool = False) -> None:
        self.folder, self.n, self.seed, self.reverse = folder, n, seed, reverse

    def items(self) -> list[WorkItem]:
        order = range(self.n - 1, -1, -1) if self.reverse else range(self.n)
        return [WorkItem(str(i), (self.folder, i, self.seed)) for i in order]

    def commit(self, results: list[ItemResult]) -> bytes:
        """All results at once, in a fixed order whatever the items' order: one file, its bytes returned."""
        body = "\n".join(open(r.value).read() for r in sorted(results, key=lambda r: int(r.key)))
        with open(os.path.join(self.folder, "committed"), "w") as f:
            f.write(body)
        return body.encode()


def attempt_then(folder: str, key: str, mode: str) -> ItemResult:
    """Record one attempt in ``folder``, then behave as ``mode``: ``ok``, ``raise`` (an application error),
    ``die`` (the worker process exits: a system failure)."""
    with open(os.path.join(folder, f"attempt-{key}-{os.getpid()}-{len(os.listdir(folder))}"), "w"):
        pass
    if mode == "raise":
        raise ValueError(f"record 12 of part {key} is bad")
    if mode == "die":
        os._exit(1)
    return ItemResult(key, value=key)


def attempts(folder: str, key: str) -> int:
    return len(glob.glob(os.path.join(folder, f"attempt-{key}-*")))


def test_toy_step_same_commit_on_ray_local_and_in_reverse(ray_cluster, tmp_path):
    commits = []
    for name, executor, reverse in (("local", LocalExecutor(1), False), ("ray", ray_executor.RayExecutor(2), False),
                                    ("ray-reversed", ray_executor.RayExecutor(2), True)):
        folder = tmp_path / name
        folder.mkdir()
        seen = []
        commits.append(run_step(ToyStep(str(folder), 9, reverse=reverse), executor, progress=seen.append))
        assert len(seen) == 9
    assert commits[0] == commits[1] == commits[2]
    assert commits[0].split(b"\n")[3] == b"16"  # 3 * 3 + 7


def test_ray_results_come_back_in_item_order(ray_cluster, tmp_path):
    items = [WorkItem(str(n), (str(tmp_path), n, 0)) for n in (5, 0, 3, 8, 1, 7, 2, 6, 4)]
    got = [r.key for r in ray_executor.RayExecutor(2).map("toy", square_to_file, items)]
    assert got == [it.key for it in items]


def test_application_error_is_named_at_once_without_retry(ray_cluster, tmp_path):
    items = [WorkItem("part natural/00000", (str(tmp_path), "a", "ok")),
             WorkItem("part natural/00001", (str(tmp_path), "b", "raise"))]
    with pytest.raises(ItemError) as err:
        list(ray_executor.RayExecutor(2, max_retries=2).map("license", attempt_then, items))
    msg = str(err.value)
    assert "license: item part natural/00001 failed" in msg and "record 12 of part b is bad" in msg
    assert isinstance(err.value.__cause__, ValueError)
    assert err.value.exit_code == 4  # a plain exception in an item is a bug (docs/cli.md); an InputError keeps 3
    assert attempts(str(tmp_path), "b") == 1  # an application error is not retried


def test_system_failure_is_retried_then_named(ray_cluster, tmp_path):
    items = [WorkItem("part code/00003", (str(tmp_path), "c", "die"))]
    with pytest.raises(ItemError) as err:
        list(ray_executor.RayExecutor(2, max_retries=1).map("dedup signatures", attempt_then, items))
    assert "dedup signatures: item part code/00003 failed" in str(err.value)
    assert "died 2 times" in str(err.value)
    assert err.value.exit_code == 1  # the environment failed, not the input
    assert attempts(str(tmp_path), "c") == 2  # the first run and one retry


def niceness(key: str) -> ItemResult:
    """One item: the scheduling priority (nice value) of the process that runs it."""
    return ItemResult(key, value=os.nice(0))


def test_local_ray_runs_items_at_the_drivers_priority(ray_cluster):
    # Ray's default starts workers 15 nice levels lower: every other process would take the cores from them
    items = [WorkItem(str(k), (str(k),)) for k in range(4)]
    got = [r.value for r in ray_executor.RayExecutor(2).map("niceness", niceness, items)]
    assert got == [os.nice(0)] * 4


def test_executor_names_are_checked(monkeypatch, tmp_path):
    with pytest.raises(executors.InputError, match="executor must be one of local, ray"):
        executors.make_executor("spark")
    with pytest.raises(executors.InputError, match="--ray-address needs --executor ray"):
        executors.check_executor("local", "auto")
    import xgen_data.execute

    monkeypatch.setitem(sys.modules, "xgen_data.execute.ray_executor", None)  # as if Ray were not installed
    monkeypatch.delattr(xgen_data.execute, "ray_executor")
    with pytest.raises(executors.InputError, match=r"--executor ray needs Ray: pip install 'xgen\[ray\]'"):
        from xgen_data.sources import ingest

        ingest.ingest(str(tmp_path / "c"), [(SAMPLE_FILES[2], None)], progress=False, executor="ray")
    assert not os.path.exists(tmp_path / "c")  # refused before the corpus was created


# -- real steps: the same bytes on both executors ------------------------------------------------------
def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def part_hashes(corpus: str) -> dict[str, str]:
    return {os.path.relpath(p, corpus): sha256(p) for p in sorted(glob.glob(f"{corpus}/docs/*/*.parquet"))}


def attribute_hashes(corpus: str, step: str) -> dict[str, str]:
    """``<params hash>/<subset>/<part>`` -> sha256 of each committed attribute file (the generation folder's
    random name left out)."""
    out = {}
    for p in sorted(glob.glob(f"{corpus}/attributes/{step}/*/g-*/*/*.parquet")):
        params, _, subset, name = p.split(os.sep)[-4:]
        out[f"{params}/{subset}/{name}"] = sha256(p)
    return out


def run_cli(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ROOT, **(env or {})}, timeout=600)


@pytest.mark.slow  # about a minute on 2 shared cores: two ingests and two dedups of the sample
def test_ingest_dedup_build_same_bytes_on_ray_and_local(ray_cluster, tmp_path, monkeypatch):
    from xgen_data.shards import packing
    from xgen_data.sources import ingest

    made = []  # the executors made by name: `mix build` makes one Ray executor for all its steps
    make = executors.make_executor
    monkeypatch.setattr(executors, "make_executor", lambda name="local", *a, **k: made.append(name) or make(name, *a, **k))

    local, on_ray = str(tmp_path / "local"), str(tmp_path / "ray")
    ingest.ingest(local, [(f, None) for f in SAMPLE_FILES], workers=2, progress=False)
    ingest.ingest(on_ray, [(f, None) for f in SAMPLE_FILES], workers=2, progress=False, executor="ray")
    assert part_hashes(local) == part_hashes(on_ray) and len(part_hashes(local)) == 3
    for corpus, executor in ((local, "local"), (on_ray, "ray")):
        defaults.run_dedup(corpus, num_perm=64, bands=16, rows=4, workers=2, progress=False, executor=executor)
    assert attribute_hashes(local, "dedup") == attribute_hashes(on_ray, "dedup")
    assert len(attribute_hashes(local, "dedup")) == 3
    # the recipe flow: its own dedup (on Ray for the Ray corpus), then packing
    for corpus, executor in ((local, "local"), (on_ray, "ray")):
        made.clear()
        packing.build_recipe(corpus, demo_code_only(), corpus + "-shards", workers=2, progress=False,
                              executor=executor)
        assert made.count("ray") == (executor == "ray"), made
    assert attribute_hashes(local, "dedup") == attribute_hashes(on_ray, "dedup")
    assert len(attribute_hashes(local, "dedup")) == 6
    shards = {name: {os.path.relpath(p, out): sha256(p) for p in glob.glob(f"{out}/**/*", recursive=True)
                     if os.path.isfile(p)} for name, out in (("local", local + "-shards"), ("ray", on_ray + "-shards"))}
    assert shards["local"] == shards["ray"] and any(p.endswith(".bin") for p in shards["local"])


@pytest.mark.slow  # about a minute: seven CLI runs of ingest and dedup on the sample
def test_killed_ray_runs_resume_without_redoing_committed_items(ray_cluster, tmp_path):
    """ingest commits per input file, dedup's signatures per part: a run killed after some commits, run again
    on Ray (through ``--ray-address``), redoes none of them and ends with the same bytes."""
    corpus, ref = str(tmp_path / "corpus"), str(tmp_path / "ref")
    ray_args = ["--executor", "ray", "--ray-address", ray_cluster]
    killed = run_cli(["ingest", "--corpus", corpus, "--quiet", *ray_args, *SAMPLE_FILES],
                     env={"XGEN_CRASH_AT": "ingest.registered"})
    assert killed.returncode == -9, killed.stderr
    again = run_cli(["ingest", "--corpus", corpus, "--quiet", *ray_args, *SAMPLE_FILES])
    assert again.returncode == 0, again.stderr
    statuses = [line.split()[2] for line in again.stdout.splitlines() if line.endswith(".jsonl") is False
                and line.split()[:1] and line.split()[0].endswith(".jsonl")]
    assert statuses == ["unchanged", "ingested", "ingested"], again.stdout
    assert run_cli(["ingest", "--corpus", ref, "--quiet", *SAMPLE_FILES]).returncode == 0
    assert part_hashes(corpus) == part_hashes(ref)

    dedup_args = ["dedup", "--corpus", corpus, "--num-perm", "64", "--bands", "16", "--rows", "4", "--quiet"]
    killed = run_cli([*dedup_args, *ray_args], env={"XGEN_CRASH_AT": "dedup.part_written"})
    assert killed.returncode == -9, killed.stderr
    again = run_cli([*dedup_args, *ray_args, "--format", "json"])
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["signature_parts_reused"] == 3
    assert run_cli([*dedup_args[:2], ref, *dedup_args[3:]]).returncode == 0
    assert attribute_hashes(corpus, "dedup") == attribute_hashes(ref, "dedup")
