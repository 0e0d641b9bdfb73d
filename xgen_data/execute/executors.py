"""Choosing an executor by name (``--executor local|ray``, ``--ray-address``), for the steps and the CLI."""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing
from typing import Callable, Iterator

from xgen_data.errors import InputError
from xgen_data.execute.local import LocalExecutor

#: The names ``--executor`` accepts; ``local`` is the default everywhere.
EXECUTORS = ("local", "ray")


def check_executor(name: str, ray_address: str | None = None) -> None:
    """Raise :class:`InputError` for an unknown executor name, a ``ray_address`` without ``ray``, or ``ray``
    when Ray is not installed (steps call this before they change anything)."""
    if name not in EXECUTORS:
        raise InputError(f"executor must be one of {', '.join(EXECUTORS)}, not {name!r}")
    if ray_address and name != "ray":
        raise InputError("--ray-address needs --executor ray")
    if name == "ray":
        _ray_executor_module()


def _ray_executor_module():
    """:mod:`xgen_data.execute.ray_executor`, imported on demand: Ray is an optional extra (``xgen[ray]``)
    and takes seconds to import, which no local run should pay."""
    try:
        from xgen_data.execute import ray_executor
    except ImportError as exc:
        raise InputError(f"--executor ray needs Ray: pip install 'xgen[ray]' ({exc})") from exc
    return ray_executor


def make_executor(name: str = "local", workers: int = 2, ray_address: str | None = None):
    """An executor for :func:`xgen_data.execute.contract.run_step`: a :class:`LocalExecutor` of ``workers``
    processes, or a ``RayExecutor`` (a local Ray of ``workers`` CPUs, or the cluster at ``ray_address``).
    The caller calls ``close()`` when done.

    Raises:
        InputError: an unknown name, ``ray_address`` without ``ray``, or Ray not installed.
    """
    check_executor(name, ray_address)
    if name == "local":
        return LocalExecutor(workers)
    return _ray_executor_module().RayExecutor(workers, ray_address)


@contextlib.contextmanager
def command_executor(executor, workers: int, ray_address: str | None = None) -> Iterator:
    """What the steps of one command share: an executor object as given (its caller closes it); for ``"ray"``
    one ``RayExecutor`` for all of them (one Ray started, closed at the end); for ``"local"`` the name itself
    (each step starts the local pool its work needs, or runs in this process).

    Raises:
        InputError: as :func:`make_executor`.
    """
    if not isinstance(executor, str):
        yield executor
        return
    check_executor(executor, ray_address)
    if executor != "ray":
        yield executor
        return
    runner = make_executor("ray", workers, ray_address)
    try:
        yield runner
    finally:
        runner.close()


def ray_pool(workers: int, ray_address: str | None = None) -> cf.Executor:
    """Ray tasks as a :class:`concurrent.futures.Executor` (``RayExecutor.pool``); its ``shutdown()`` shuts
    down the Ray it started (a Ray the caller started is left running).

    Raises:
        InputError: Ray not installed.
    """
    return _ray_executor_module().RayExecutor(workers, ray_address).pool()


@contextlib.contextmanager
def step_pool(name: str, workers: int, ray_address: str | None = None,
              initializer: Callable[[], None] | None = None) -> Iterator[cf.Executor | None]:
    """A :class:`concurrent.futures.Executor` for the steps that submit their own work (ingest's batches,
    dedup's signature parts): ``workers`` spawned processes (each running ``initializer`` once; None when
    ``workers <= 1``: run in this process) for ``local``; Ray tasks for ``ray`` (``initializer`` is not run
    there: item functions load what they need lazily, once per worker process).

    Raises:
        InputError: as :func:`make_executor`.
    """
    check_executor(name, ray_address)
    if name == "ray":
        pool = ray_pool(workers, ray_address)
        try:
            yield pool
        finally:
            pool.shutdown()
        return
    if workers <= 1:
        yield None
        return
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=initializer) as pool:
        yield pool
