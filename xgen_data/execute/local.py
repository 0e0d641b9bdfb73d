"""The local executor: items in this process (``workers=1``) or in a pool of spawned processes."""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Iterator, Sequence

from xgen_data.execute.contract import ItemError, ItemResult, WorkItem


class LocalExecutor:
    """Run items on ``workers`` processes of this machine (spawned, so no state leaks from the parent).

    A worker process that dies (a system failure: killed, out of memory) breaks the pool; the items not
    yet finished are retried on a fresh pool up to ``retries`` times, then reported as :class:`ItemError`.
    An exception raised by an item is an application error: reported at once, naming the item.
    """

    def __init__(self, workers: int = 2, retries: int = 2) -> None:
        self.workers, self.retries = max(1, int(workers)), retries

    def map(self, step_name: str, fn: Callable[..., ItemResult], items: Sequence[WorkItem],
            progress: Callable[[ItemResult], None] | None = None) -> Iterator[ItemResult]:
        if self.workers == 1 or len(items) <= 1:
            for item in items:
                yield _report(progress, _run_here(step_name, fn, item))
            return
        done: dict[int, ItemResult] = {}
        pending = list(range(len(items)))
        for attempt in range(self.retries + 1):
            pending = self._run_pool(step_name, fn, items, pending, done, progress, last=attempt == self.retries)
            if not pending:
                break
        for i in range(len(items)):
            yield done[i]

    def _run_pool(self, step_name, fn, items, pending, done, progress, last: bool) -> list[int]:
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(min(self.workers, len(pending)), mp_context=ctx) as pool:
            futures = {pool.submit(fn, *items[i].args): i for i in pending}
            broken: list[int] = []
            for fut in cf.as_completed(futures):
                i = futures[fut]
                try:
                    done[i] = _report(progress, fut.result())
                except BrokenProcessPool as exc:
                    if last:
                        raise ItemError(step_name, items[i].key, f"worker process died ({exc})") from exc
                    broken.append(i)
                except Exception as exc:
                    raise ItemError(step_name, items[i].key, exc) from exc
        return sorted(broken)

    def close(self) -> None:
        """Nothing to release: each ``map`` owns its pool."""


def _run_here(step_name: str, fn, item: WorkItem) -> ItemResult:
    try:
        return fn(*item.args)
    except Exception as exc:
        raise ItemError(step_name, item.key, exc) from exc


def _report(progress, result: ItemResult) -> ItemResult:
    if progress is not None:
        progress(result)
    return result
