"""The Ray executor: items as ``ray.remote`` tasks on a local Ray or on a cluster (``--ray-address``).

Ray is the optional extra ``xgen[ray]`` (ray 2.60, ``requirements-ray.lock``); this module imports it at the
top, so import it only when ``--executor ray`` is asked for (:func:`xgen_data.execute.executors.make_executor`).

Failures, as Ray classifies them (https://docs.ray.io/en/latest/ray-core/fault-tolerance.html):

- a **system failure** (the worker process died: killed, out of memory; its node was lost) is retried by Ray
  up to ``max_retries`` times, then reported as :class:`ItemError` naming the item;
- an **application error** (the item's function raised) is not retried (``retry_exceptions=False``): the
  same inputs and seed would raise again. It is reported at once as :class:`ItemError` naming the item,
  with the original exception as its cause (the part and record it names).

Every worker reads and writes the corpus by path, so the corpus must sit on a filesystem every worker sees
(docs/scale.md); item functions return small values (paths, counts) or Arrow batches through Ray's object
store.
"""
from __future__ import annotations

import concurrent.futures as cf
import os
from typing import Callable, Iterator, Sequence

import ray
import ray.exceptions

from xgen_data.execute.contract import ItemError, ItemResult, WorkItem

#: Object store of a local Ray started here: items pass paths and single batches (a few MiB), so a small
#: store suffices and leaves the machine's memory to the workers (Ray's minimum is 75 MiB).
LOCAL_OBJECT_STORE_BYTES = 256 << 20
#: The environment of a local Ray's task workers. Ray starts its workers 15 nice levels below the driver
#: (``worker_niceness``, so that a cluster node's raylet and GCS stay responsive); on one machine that makes
#: the items yield the CPU to every other process of the same scheduling group (the driver committing
#: results, Ray's own services, the user's other commands), where the local executor's pool processes share
#: it evenly. ``0`` runs them at the driver's priority, as the local executor's processes are.
LOCAL_WORKER_ENV = {"RAY_worker_niceness": "0"}


def start_ray(workers: int, address: str | None = None,
              object_store_bytes: int = LOCAL_OBJECT_STORE_BYTES) -> bool:
    """Connect to Ray: to the cluster at ``address`` (``"auto"``, ``"ray://host:10001"``, ``"host:6379"``), or,
    with no address, start a local Ray of ``workers`` CPUs and a ``object_store_bytes`` object store.

    A local Ray's workers inherit this process's environment and run at its priority
    (:data:`LOCAL_WORKER_ENV`); on a cluster the ``XGEN_*`` variables (the tokenizer ranks' path, DuckDB's spill
    folder) are passed to the job's workers, and every node must see the same paths (docs/scale.md). A Ray
    already initialised in this process is used as it is. Returns True when this call started or connected Ray
    (so its caller shuts it down), False when one was running already.

    Raises:
        ValueError: ``workers < 1``. ConnectionError (from Ray): no cluster at ``address``.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if ray.is_initialized():
        return False
    if address:  # a cluster's workers do not inherit this process's environment: pass xgen's own variables
        env = {k: v for k, v in os.environ.items() if k.startswith("XGEN_") and k != "XGEN_CRASH_AT"}
        ray.init(address=address, logging_level="WARNING", log_to_driver=True, runtime_env={"env_vars": env})
    else:
        ray.init(num_cpus=workers, object_store_memory=object_store_bytes, include_dashboard=False,
                 logging_level="WARNING", log_to_driver=True, runtime_env={"env_vars": LOCAL_WORKER_ENV})
    return True


def cluster_cpus(default: int) -> int:
    """The CPUs of the Ray this process is connected to (``default`` when Ray reports none)."""
    return max(1, int(ray.cluster_resources().get("CPU", default)))


class RayExecutor:
    """Run items as Ray tasks, at most ``2 × cluster CPUs`` in flight, results in item order.

    Args:
        workers: CPUs of the local Ray started when none is running and no ``address`` is given.
        address: a Ray cluster to connect to (None: local).
        max_retries: how often Ray re-runs a task whose worker died before the item is reported.
    """

    def __init__(self, workers: int = 2, address: str | None = None, max_retries: int = 2) -> None:
        self.max_retries = max_retries
        self._owns_ray = start_ray(workers, address)
        self.cpus = cluster_cpus(workers)
        self._remote: dict[Callable, object] = {}

    def remote(self, fn: Callable):
        """``fn`` as a Ray remote function of 1 CPU with this executor's retry rule (cached per function)."""
        if fn not in self._remote:
            self._remote[fn] = ray.remote(fn).options(num_cpus=1, max_retries=self.max_retries,
                                                      retry_exceptions=False)
        return self._remote[fn]

    def map(self, step_name: str, fn: Callable[..., ItemResult], items: Sequence[WorkItem],
            progress: Callable[[ItemResult], None] | None = None) -> Iterator[ItemResult]:
        """Yield ``fn(*item.args)`` for every item, in ``items`` order, each as soon as the items before it are
        done (see the module docstring for errors; a failed item is raised at its place in the order).

        At most ``2 × cpus`` items are submitted or held finished-but-not-yielded at once, so memory stays
        bounded whatever the number of items.
        """
        task = self.remote(fn)
        window = 2 * self.cpus
        running: dict[object, int] = {}
        finished: dict[int, ItemResult] = {}
        submitted = yielded = 0
        try:
            while yielded < len(items):
                while submitted < len(items) and len(running) + len(finished) < window:
                    running[task.remote(*items[submitted].args)] = submitted
                    submitted += 1
                if yielded not in finished:
                    ready, _ = ray.wait(list(running), num_returns=1)
                    for ref in ready:
                        i = running.pop(ref)
                        try:
                            finished[i] = _get(step_name, items[i], ref, self.max_retries)
                        except ItemError as exc:  # raised at its place: the items before it are yielded first
                            finished[i] = exc
                            continue
                        if progress is not None:
                            progress(finished[i])
                while yielded in finished:
                    result = finished.pop(yielded)
                    if isinstance(result, ItemError):
                        raise result
                    yield result
                    yielded += 1
        finally:
            for ref in running:  # a failed or abandoned map leaves no task running
                ray.cancel(ref, force=True)

    def pool(self) -> "RayPool":
        """This executor as a :class:`concurrent.futures.Executor` (for the steps that submit work themselves)."""
        return RayPool(self)

    def close(self) -> None:
        """Shut Ray down if this executor started it (a Ray started by the caller is left running)."""
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
        self._owns_ray = False


class RayPool(cf.Executor):
    """A :class:`concurrent.futures.Executor` whose ``submit`` runs the call as a Ray task.

    The futures are Ray's (``ObjectRef.future()``): ``cf.as_completed`` and ``result()`` work on them; a
    task's exception is re-raised by ``result()`` (Ray's ``RayTaskError`` is also an instance of the original
    exception's class). ``_max_workers`` is the cluster's CPUs, as a process pool's is its processes.
    """

    def __init__(self, executor: RayExecutor) -> None:
        self._executor = executor
        self._max_workers = executor.cpus

    def submit(self, fn, /, *args, **kwargs) -> cf.Future:
        return self._executor.remote(fn).remote(*args, **kwargs).future()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Close the executor: shut Ray down if it started it (its workers' memory goes with it)."""
        self._executor.close()


def _get(step_name: str, item: WorkItem, ref, retries: int) -> ItemResult:
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:  # the item's function raised: not retried
        cause = exc.cause if exc.cause is not None else exc
        raise ItemError(step_name, item.key, f"{type(cause).__name__}: {cause}") from cause
    except ray.exceptions.RayError as exc:  # the worker or node died, retries spent
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ItemError(step_name, item.key, f"the worker running it died {retries + 1} times "
                        f"({type(exc).__name__}: {first})", system=True) from exc
