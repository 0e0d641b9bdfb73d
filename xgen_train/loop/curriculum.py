"""The training curriculum: every stage and sub-stage of a shards manifest, in order, as one run (SPEC §2, §4).

XGen trains stage 1 at 2K, then 4K, then 8K tokens per sequence, then stage 2; "stage boundaries carry the
model and optimizer state over; only the data and sequence length change" (SPEC §4). A :class:`Plan` turns
a manifest into consecutive :class:`Phase` s (one per sub-stage) on one global step axis:

* Batch: constant in tokens per update (``batch_tokens``; ``batch_size = batch_tokens // seq_len``, which
  must divide exactly) or constant in sequences (``batch_size``).
* Budget: one pass over the sub-stage's train sequences (``n_sequences - validation_sequences`` in the
  manifest, i.e. its token budget less the held-out split). Steps of a sub-stage = ``floor(n_sequences / batch_size)``;
  the remaining ``n_sequences % batch_size`` sequences (less than one batch) are skipped, deterministically
  the last ones of the seeded order (:meth:`xgen_train.loop.data.ShardLoader.batch_at` for steps
  ``0..steps-1``), and reported as ``skipped_sequences``.
* Global update ``s`` belongs to the phase with ``start_step <= s < end_step`` and reads
  ``batch_at(seed, s - start_step)`` of that sub-stage; ``tokens_seen`` after it is the sum of the earlier
  phases' tokens plus ``(s - start_step + 1) * batch_size * seq_len`` of the current one.

Pure functions of the manifest and the batch setting: the same inputs give the same plan, so a resumed
run can recompute where it is (:meth:`Plan.position`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from xgen_data.errors import InputError

__all__ = ["DataPosition", "Phase", "Plan", "batch_size_for", "make_plan", "substages_of"]


@dataclass(frozen=True)
class Phase:
    """One sub-stage on the run's step axis (see module docstring)."""

    index: int
    stage: str
    substage: str
    seq_len: int
    n_sequences: int  # train sequences of the sub-stage (manifest n_sequences - validation_sequences)
    batch_size: int  # sequences per update
    steps: int  # updates = n_sequences // batch_size
    start_step: int  # global index of its first update
    start_tokens: int  # tokens seen before it
    validation_sequences: int = 0
    epochs: int = 1  # passes over the train sequences (SFT: SPEC §5's 3), each in a fresh seeded order

    @property
    def end_step(self) -> int:
        return self.start_step + self.steps

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    @property
    def skipped_sequences(self) -> int:
        return self.n_sequences * self.epochs - self.steps * self.batch_size

    @property
    def name(self) -> str:
        return f"{self.stage}/{self.substage}"

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if self.epochs == 1:  # one pass (pre-training): the plan records no epochs
            del d["epochs"]
        return {**d, "end_step": self.end_step, "skipped_sequences": self.skipped_sequences}


@dataclass(frozen=True)
class DataPosition:
    """Where a run stands after ``step`` updates: phase index, update within it, tokens seen so far."""

    step: int
    phase: int
    stage: str
    substage: str
    step_in_phase: int
    tokens_seen: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Plan:
    """Consecutive phases; ``total_steps`` = sum of their steps."""

    phases: tuple[Phase, ...]

    @property
    def total_steps(self) -> int:
        return self.phases[-1].end_step if self.phases else 0

    @property
    def total_tokens(self) -> int:
        last = self.phases[-1]
        return last.start_tokens + last.steps * last.tokens_per_step

    def phase_of(self, step: int) -> Phase:
        """The phase that trains update ``step`` (0-based, ``< total_steps``)."""
        for ph in self.phases:
            if ph.start_step <= step < ph.end_step:
                return ph
        raise IndexError(f"step {step} outside the plan's {self.total_steps} updates")

    def position(self, step: int) -> DataPosition:
        """Position after ``step`` updates (``0 <= step <= total_steps``); at a boundary, the next phase."""
        if not 0 <= step <= self.total_steps:
            raise IndexError(f"step {step} outside [0, {self.total_steps}]")
        live = [ph for ph in self.phases if ph.steps]
        ph = next((p for p in live if step < p.end_step), live[-1])
        k = step - ph.start_step
        return DataPosition(step, ph.index, ph.stage, ph.substage, k, ph.start_tokens + k * ph.tokens_per_step)

    def tokens_seen(self, step: int) -> int:
        """Tokens trained on after ``step`` updates."""
        return self.position(step).tokens_seen

    def to_list(self) -> list[dict]:
        return [ph.to_dict() for ph in self.phases]


def substages_of(manifest: dict, stage: str | None = None, substage: str | None = None) -> list[tuple[str, dict]]:
    """``(stage name, sub-stage entry)`` in manifest order: all, those of ``stage``, or the one named.

    Raises:
        ValueError: unknown stage/sub-stage, or a sub-stage name found in several stages without ``stage``.
    """
    stages = [s for s in manifest.get("stages", []) if isinstance(s, dict)]
    names = [s.get("name") for s in stages]
    if stage is not None and stage not in names:
        raise InputError(f"no stage {stage!r} in the manifest; available: {', '.join(map(str, names))}")
    out = [(s["name"], sub) for s in stages if stage in (None, s.get("name"))
           for sub in s.get("substages") or [] if isinstance(sub, dict)]
    if substage is not None:
        picked = [(st, sub) for st, sub in out if sub.get("name") == substage]
        if not picked:
            avail = ", ".join(f"{st}/{sub.get('name')}" for st, sub in out)
            raise InputError(f"no sub-stage {substage!r}" + (f" in stage {stage!r}" if stage else "") +
                             f"; available: {avail}")
        if len(picked) > 1:
            raise InputError(f"sub-stage {substage!r} is in several stages ({', '.join(st for st, _ in picked)}); "
                             "choose one with --stage")
        out = picked
    if not out:
        raise InputError("the manifest has no sub-stages")
    return out


def batch_size_for(seq_len: int, batch_tokens: int | None, batch_size: int | None) -> int:
    """Sequences per update at ``seq_len``: ``batch_size``, or ``batch_tokens // seq_len`` (exactly).

    Raises:
        ValueError: both or neither given, or ``batch_tokens`` not a positive multiple of ``seq_len``.
    """
    if (batch_tokens is None) == (batch_size is None):
        raise InputError("give exactly one of batch_tokens (--batch-tokens) and batch_size (--batch-size)")
    if batch_size is not None:
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        return batch_size
    if batch_tokens < seq_len or batch_tokens % seq_len:
        raise InputError(f"--batch-tokens {batch_tokens} is not a positive multiple of seq_len {seq_len}; "
                         "use a multiple of every sub-stage's seq_len, or --batch-size")
    return batch_tokens // seq_len


def make_plan(manifest: dict, *, batch_tokens: int | None = None, batch_size: int | None = None,
              stage: str | None = None, substage: str | None = None, budget_fraction: float = 1.0,
              epochs: int = 1) -> Plan:
    """The :class:`Plan` of a manifest (module docstring). Sub-stages with fewer sequences than one batch get
    0 steps (reported by their ``skipped_sequences``).

    ``budget_fraction`` in ``(0, 1]`` scales every sub-stage's budget alike (``floor(n_sequences * f)``
    sequences, then whole batches): the whole curriculum at a small scale, e.g. for a demo or a smoke test.
    ``epochs`` >= 1 passes over each sub-stage (``floor(n_sequences * epochs * f)`` samples, then whole
    batches; :meth:`xgen_train.loop.data.ShardLoader.batch_at` draws a fresh order per epoch).

    Raises:
        ValueError: see :func:`substages_of` and :func:`batch_size_for`; a fraction outside ``(0, 1]``; a plan
            with no update at all.
    """
    if not 0.0 < budget_fraction <= 1.0:
        raise InputError(f"budget_fraction must be in (0, 1], got {budget_fraction}")
    if int(epochs) != epochs or epochs < 1:
        raise InputError(f"epochs must be an integer >= 1, got {epochs}")
    phases = []
    step = tokens = 0
    for k, (st, sub) in enumerate(substages_of(manifest, stage, substage)):
        seq_len = int(sub["seq_len"])
        bs = batch_size_for(seq_len, batch_tokens, batch_size)
        n_val = int(sub.get("validation_sequences", 0))
        n = int(sub["n_sequences"]) - n_val  # the train split
        used = n * epochs if budget_fraction == 1.0 else int(n * epochs * budget_fraction)
        ph = Phase(k, st, str(sub["name"]), seq_len, n, bs, used // bs, step, tokens, n_val, int(epochs))
        phases.append(ph)
        step += ph.steps
        tokens += ph.steps * ph.tokens_per_step
    if step == 0:
        raise InputError("no sub-stage has a full batch of sequences: "
                         + ", ".join(f"{p.name} {p.n_sequences} < {p.batch_size}" for p in phases))
    return Plan(tuple(phases))
