"""Attribute steps on the step contract (:mod:`xgen_data.execute.contract`): one work item per docs part.

An item reads one part and writes that part's attribute file into the step's uncommitted generation folder
(a temporary location only the commit makes visible); its function is a module-level function of its
arguments alone, so any executor may run it in any process and order. The commit records every file's
SHA-256 and the parts fingerprint with one atomic registry write
(:meth:`xgen_data.store.corpus.Corpus.commit_attributes`), or a crash leaves the old state.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from xgen_data.execute.contract import Executor, ItemResult, StepReport, WorkItem, run_step
from xgen_data.execute.local import LocalExecutor
from xgen_data.store.corpus import Corpus


@dataclass
class PartAttributeStep:
    """The attribute set ``(name, params)`` of every part of ``corpus``, as a step.

    ``item_fn(part_path, out_path, crash_point, *extra, *part_args(i, part)) -> ItemResult`` writes ``out_path``
    (atomically) from the part at ``part_path``; ``crash_point`` is the named commit point after the first item
    (None for the others; for every item with ``crash_in_items=False``, whose caller fires that point in the
    driver when the first result arrives, wherever the items run); ``part_args`` (optional) gives the arguments
    that differ per part (part ``i`` of :meth:`Corpus.parts`).
    Creating the step starts a fresh generation (:meth:`Corpus.start_attributes`: leftovers removed, parts
    verified with ``verify``); call under the corpus lock. ``update(meta)`` changes the commit's registry write.
    """

    name: str
    item_fn: Callable[..., ItemResult]
    corpus: Corpus
    params: dict
    extra: tuple = ()
    verify: bool = True
    update: Callable[[dict], None] | None = None
    part_args: Callable[[int, object], tuple] | None = None
    crash_in_items: bool = True
    started: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        self.parts, self.fingerprint, self.gen = self.corpus.start_attributes(self.name, self.params, self.verify)

    def items(self) -> list[WorkItem]:
        """One item per part, in :meth:`Corpus.parts` order, keyed ``part <subset>/<name>``."""
        return [WorkItem(f"part {p.subset}/{p.name}",
                         (p.path, self.corpus.attribute_path(self.gen, p),
                          f"{self.name}.part_written" if i == 0 and self.crash_in_items else None, *self.extra,
                          *(self.part_args(i, p) if self.part_args is not None else ())))
                for i, p in enumerate(self.parts)]

    def commit(self, results: list[ItemResult]) -> StepReport:
        """Commit the generation (one registry write); returns the step's report."""
        self.corpus.commit_attributes(self.name, self.params, self.gen, self.fingerprint, self.update)
        return StepReport.of(self.name, results, time.time() - self.started)


def run_part_step(step: PartAttributeStep, executor: Executor | None = None) -> StepReport:
    """Run ``step`` on ``executor`` (default: this process, :class:`LocalExecutor` with one worker) and commit.

    Raises:
        ItemError: an item failed (naming its part); nothing is committed then.
    """
    return run_step(step, executor if executor is not None else LocalExecutor(workers=1))
