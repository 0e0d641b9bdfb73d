"""The step contract: a data step lists its work items, runs one item as a pure function of its inputs
and seed, and commits all results at once; executors only run items, retry, and report progress.

A step knows no executor and an executor knows no step:

- ``Step.items()`` lists the work (one item per part, per band, per stage), each with a stable ``key``.
- ``Step.item_fn(*item.args)`` is a module-level (picklable) function that computes one item from its
  arguments alone (paths, parameters, seed), writes only to a temporary location the commit knows, and
  returns an :class:`ItemResult`. Items are independent: running them in any order, on any process or
  node, gives the same bytes.
- ``Step.commit(results)`` takes the results in ``items()`` order and makes them visible with one atomic
  registry write (``Corpus.commit_attributes`` and friends), or leaves the old state.

Executors (``local.LocalExecutor``, ``ray_executor.RayExecutor``) implement ``map``: results come back in
item order whatever order they finished in.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol, Sequence

from xgen_data.errors import EXIT_BUG, EXIT_INPUT, EXIT_PROBLEM, XgenError


@dataclass(frozen=True)
class WorkItem:
    """One unit of a step: ``key`` names it in reports and errors (e.g. ``part natural/00003``);
    ``args`` are the picklable arguments of the step's ``item_fn``."""

    key: str
    args: tuple


@dataclass
class ItemResult:
    """What one item computed: ``value`` is what the step's commit needs (picklable); the counts feed
    the step's report (documents read, bytes read, seconds spent)."""

    key: str
    value: Any = None
    documents: int = 0
    bytes: int = 0
    seconds: float = 0.0


@dataclass
class StepReport:
    """Every step reports in this one shape."""

    step: str
    items: int = 0
    documents: int = 0
    bytes: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, step: str, results: Sequence[ItemResult], seconds: float) -> "StepReport":
        return cls(step, len(results), sum(r.documents for r in results), sum(r.bytes for r in results), seconds)


class ItemError(XgenError):
    """An item failed: an application error at once, or a system failure (``system``: the worker process
    died) after the executor's retries. The message names the step and the item key, then the cause; the
    exception the item raised is chained as ``__cause__``."""

    def __init__(self, step: str, key: str, cause: BaseException | str, system: bool = False) -> None:
        super().__init__(f"{step}: item {key} failed: {cause}")
        self.step, self.key, self.cause, self.system = step, key, cause, system

    @property
    def exit_code(self) -> int:
        """The CLI's exit code (docs/cli.md) follows the cause: a system failure or an ``OSError`` is the
        environment's (1), an xgen error keeps its own code (bad input: 3), any other exception is a bug (4)."""
        cause = self.__cause__ if self.__cause__ is not None else self.cause
        if self.system or isinstance(cause, OSError):
            return EXIT_PROBLEM
        if isinstance(cause, XgenError):
            return cause.exit_code
        return EXIT_BUG if isinstance(cause, BaseException) else EXIT_INPUT


class Step(Protocol):
    """What an executor runs (see the module docstring)."""

    name: str
    item_fn: Callable[..., ItemResult]

    def items(self) -> list[WorkItem]: ...

    def commit(self, results: list[ItemResult]) -> Any: ...


class Executor(Protocol):
    """Runs items; knows no step."""

    def map(self, step_name: str, fn: Callable[..., ItemResult], items: Sequence[WorkItem],
            progress: Callable[[ItemResult], None] | None = None) -> Iterator[ItemResult]:
        """Yield ``fn(*item.args)`` for every item, in ``items`` order, each once the items before it are done;
        an item that fails raises :class:`ItemError` naming it, at its place in the order."""
        ...

    def close(self) -> None: ...


def run_step(step: Step, executor: Executor, progress: Callable[[ItemResult], None] | None = None) -> Any:
    """List ``step``'s items, run them on ``executor``, then commit every result at once.

    Returns whatever ``step.commit`` returns. Raises :class:`ItemError` when an item fails; nothing is
    committed then.
    """
    results = list(executor.map(step.name, step.item_fn, step.items(), progress))
    return step.commit(results)
