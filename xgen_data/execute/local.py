"""The local executor: items in this process (``workers=1``) or in a pool of spawned processes."""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Iterator, Sequence

from xgen_data.execute.contract import ItemError, ItemResult, WorkItem

#: How often a worker process checks that the process that started it is still alive (seconds).
PARENT_POLL_SECONDS = 1.0


class LocalExecutor:
    """Run items on ``workers`` processes of this machine (spawned, so no state leaks from the parent).

    Results come back in item order as soon as every item before them is done, so a step can commit item
    ``i`` while later items still run. An exception raised by an item is an application error: it is raised
    at that item's place in the order (the items before it are yielded first), naming the item, and the
    items not yet started are cancelled. A worker process that dies (a system failure: killed, out of
    memory) breaks the pool; the items not yet finished are retried on a fresh pool up to ``retries``
    times, then reported as :class:`ItemError`.

    One pool serves every ``map`` of this executor until :meth:`close` (a command runs several steps on one
    executor, and starting spawned workers costs about a second each); a ``map`` that ends early (an item
    failed, or the caller stopped reading) shuts the pool down, so no item of it keeps running.

    A worker outlives no parent: each worker polls its parent every :data:`PARENT_POLL_SECONDS` and exits
    once it is gone (killed with SIGKILL, which runs no clean-up), so no orphan keeps computing or writing
    files for a run nobody will finish.
    """

    def __init__(self, workers: int = 2, retries: int = 2) -> None:
        self.workers, self.retries = max(1, int(workers)), retries
        self._pool: cf.ProcessPoolExecutor | None = None

    def map(self, step_name: str, fn: Callable[..., ItemResult], items: Sequence[WorkItem],
            progress: Callable[[ItemResult], None] | None = None) -> Iterator[ItemResult]:
        if self.workers == 1 or len(items) <= 1:
            for item in items:
                yield _report(progress, _run_here(step_name, fn, item))
            return
        done: dict[int, ItemResult | ItemError] = {}
        pending, cursor = list(range(len(items))), [0]
        for attempt in range(self.retries + 1):
            pending = yield from self._run_pool(step_name, fn, items, pending, done, cursor, progress,
                                                last=attempt == self.retries)
            if not pending:
                break
        yield from _ready(done, cursor, len(items))

    def _run_pool(self, step_name, fn, items, pending, done, cursor, progress, last: bool):
        """Run ``pending`` items on the pool, yielding the ready prefix as items finish; returns the items
        whose worker died (to retry on a fresh pool)."""
        pool, finished = self._open_pool(), False
        try:
            futures = {pool.submit(fn, *items[i].args): i for i in pending}
            broken: list[int] = []
            for fut in cf.as_completed(futures):
                i = futures[fut]
                try:
                    done[i] = _report(progress, fut.result())
                except BrokenProcessPool as exc:
                    if not last:
                        broken.append(i)
                        continue
                    done[i] = ItemError(step_name, items[i].key, f"worker process died ({exc})", system=True)
                    done[i].__cause__ = exc
                except Exception as exc:
                    done[i] = ItemError(step_name, items[i].key, exc)
                    done[i].__cause__ = exc
                if not broken:
                    yield from _ready(done, cursor, len(items))
            finished = not broken
        finally:
            if not finished:
                self.close()
        return sorted(broken)

    def _open_pool(self) -> cf.ProcessPoolExecutor:
        if self._pool is None:
            ctx = multiprocessing.get_context("spawn")
            self._pool = cf.ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=exit_with_parent,
                                                initargs=(os.getpid(),))
        return self._pool

    def close(self) -> None:
        """Shut the worker pool down (waiting for its processes; items not started are cancelled)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _ready(done: dict, cursor: list[int], n: int) -> Iterator[ItemResult]:
    """Yield the finished items from ``cursor[0]`` on, in order, up to the first unfinished one; raise a
    failed item's :class:`ItemError` at its place."""
    while cursor[0] < n and cursor[0] in done:
        result = done.pop(cursor[0])
        if isinstance(result, ItemError):
            raise result
        cursor[0] += 1
        yield result


def exit_with_parent(parent: int, poll_seconds: float = PARENT_POLL_SECONDS) -> None:
    """In a worker process (a pool's ``initializer``): end this process soon after ``parent`` (the pid that
    started it) is gone, e.g. killed with SIGKILL. A pool's workers otherwise wait forever on the task queue,
    whose write end they hold too, or keep writing files for a run nobody will finish. Starts a daemon thread."""

    def watch() -> None:
        while True:
            time.sleep(poll_seconds)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _run_here(step_name: str, fn, item: WorkItem) -> ItemResult:
    try:
        return fn(*item.args)
    except Exception as exc:
        raise ItemError(step_name, item.key, exc) from exc


def _report(progress, result: ItemResult) -> ItemResult:
    if progress is not None:
        progress(result)
    return result
