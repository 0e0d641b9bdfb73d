"""Checks that keep a run honest: numeric settings that can work, and a stop when updates stop being applied.

A run whose every update is non-finite (say ``--z-loss nan``) skips them all (:mod:`xgen_train.loop.step`'s
non-finite skip) and would otherwise end "successfully" with a checkpoint of its initial weights.
:func:`check_settings` refuses non-finite or out-of-range numbers before any work, and :class:`SkipGuard`
stops the run with :class:`~xgen_data.errors.ProblemFound` (exit 1) once ``max_skipped`` consecutive updates
were skipped (non-finite gradients, or loss spikes with ``--skip-spikes``), or at a non-finite loss.
"""
from __future__ import annotations

import math

from xgen_data.errors import InputError, ProblemFound

#: Consecutive skipped updates after which a run stops (``xgen train --max-skipped``).
DEFAULT_MAX_SKIPPED = 10

#: name -> (lowest, highest, lowest excluded): the range of each numeric setting of ``train`` (None: open).
RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    "lr": (0, None, True), "final_lr_ratio": (0, 1, False), "weight_decay": (0, None, False),
    "clip_norm": (0, None, False), "b1": (0, 1, False), "b2": (0, 1, False), "budget_fraction": (0, 1, True),
    "spike_std": (0, None, True), "spike_window": (1, None, False), "peak_flops": (0, None, True),
    "max_skipped": (1, None, False), "warmup": (0, None, False), "seed": (0, None, False),
}


class NonFiniteLoss(ProblemFound, FloatingPointError):
    """A non-finite training loss (exit 1); still a ``FloatingPointError`` for callers that catch that."""


def check_settings(**values) -> None:
    """Refuse a numeric setting that is NaN, infinite or outside its range (:data:`RANGES`; None is allowed).

    Raises:
        InputError: names the setting, its value and the range.
    """
    for name, value in values.items():
        if value is None or isinstance(value, bool):
            continue
        if not math.isfinite(value):
            raise InputError(f"{name} must be a finite number, got {value}")
        lo, hi, lo_open = RANGES.get(name, (None, None, False))
        if lo is not None and (value < lo or (lo_open and value == lo)):
            raise InputError(f"{name} must be {'>' if lo_open else '>='} {lo:g}, got {value}")
        if hi is not None and value > hi:
            raise InputError(f"{name} must be <= {hi:g}, got {value}")


class SkipGuard:
    """Counts consecutive skipped updates from the metrics records; :meth:`check` raises when the run stops
    learning. ``where``: the metrics file, named in the error."""

    def __init__(self, max_skipped: int = DEFAULT_MAX_SKIPPED, where: str = "metrics.jsonl") -> None:
        check_settings(max_skipped=max_skipped)
        self.max_skipped, self.where, self.run = max_skipped, where, 0

    def check(self, rec: dict) -> None:
        """Take one update's record (``step``, ``loss``, ``skipped``, ``nonfinite``).

        Raises:
            NonFiniteLoss: the loss is non-finite. ProblemFound: ``max_skipped`` updates in a row were skipped.
        """
        if not math.isfinite(rec["loss"]):
            raise NonFiniteLoss(f"non-finite loss {rec['loss']} at step {rec['step']} (the update was skipped); the "
                               f"run stopped without learning; see {self.where}")
        self.run = self.run + 1 if rec.get("skipped") else 0
        if self.run >= self.max_skipped:
            why = "non-finite gradients" if rec.get("nonfinite") else "loss spikes (--skip-spikes)"
            raise ProblemFound(f"{self.run} consecutive updates were skipped (last at step {rec['step']}: {why}); "
                               "the run stopped without learning. Check the settings (learning rate, --z-loss, "
                               f"precision) or raise --max-skipped; see {self.where}")
