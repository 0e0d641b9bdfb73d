"""What the training loop does around its updates, as hooks: metrics, validation, log lines, checkpoints.

The loop (:func:`xgen_train.loop.trainer.run_training`) owns a :class:`RunContext` (fixed for the run) and a
:class:`LoopState` (params, optimizer state, step, records). After every update it computes :class:`Due` (what
the cadences ask for at this step) and calls each hook's ``after_update`` in order; at a phase start it calls
``on_phase_start``. A new report or side output is a new hook, not a change to the loop.

Invariant kept by the order of :func:`default_hooks`: the device metrics are fetched (one transfer for the
pending group of updates) before anything that needs the host to wait (validation, a checkpoint, a log
line), so the loop never syncs with the device between those points.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from xgen_train.loop.checkpoint import CheckpointStore, make_meta
from xgen_train.loop.config import TrainConfig
from xgen_train.loop.curriculum import Phase, Plan
from xgen_train.loop.feed import Feed
from xgen_train.loop.guards import SkipGuard
from xgen_train.loop.optimizer import OptimizerConfig, learning_rate
from xgen_train.scale.flops import mfu

__all__ = ["CheckpointHook", "Due", "LogHook", "LoopState", "MetricsHook", "RunContext", "ValidationHook",
           "adam_count", "default_hooks", "due_after"]


@dataclass
class RunContext:
    """Everything fixed once a run is set up (read by the loop and the hooks)."""

    tc: TrainConfig
    objective: str  # "pretrain" or "sft"
    out: Path
    main: bool  # this process writes files
    model_cfg: Any
    plan: Plan
    opt_cfg: OptimizerConfig
    num: Any  # resolved NumericsOptions
    run: dict  # run_config: what a resume must match
    feed: Feed
    stop_step: int
    schedule_steps: int
    peak: float | None
    n_chips: int
    fetch: Callable  # the loop's one device -> host transfer of metrics
    dmesh: Any = None  # the device mesh

    @property
    def metrics_path(self) -> Path:
        return self.out / "metrics.jsonl"


@dataclass
class LoopState:
    """The mutable state of the loop: the model state and what has been recorded so far."""

    params: Any
    opt_state: Any
    monitor: Any
    step: int
    start_step: int
    resumed_from: Path | None = None
    history: list = field(default_factory=list)  # records of the earlier run before start_step
    records: list = field(default_factory=list)  # this run's records
    pending: list = field(default_factory=list)  # (step, phase, index in phase, device metrics) not yet fetched
    loop_start: float = 0.0
    t_mark: float = 0.0  # when the oldest pending update was dispatched (after any non-update work)
    compile_seconds: float = 0.0
    interrupted: str | None = None
    last_ckpt: Path | None = None
    last_rec: dict | None = None
    last_val: dict | None = None


class Due(NamedTuple):
    """What the cadences ask for after the update that brought the state to ``step``."""

    eval: bool
    ckpt: bool
    log: bool
    sync: bool


def due_after(ctx: RunContext, st: LoopState, ph: Phase, end: int, stop_received: bool) -> Due:
    """The cadences after an update (``st.step`` updates done; ``end`` = where this phase's loop stops)."""
    s, mon = st.step, ctx.tc.monitor
    do_eval = bool((mon.eval_every and s % mon.eval_every == 0) or s == ph.end_step or s == ctx.stop_step)
    every = ctx.tc.checkpointing.checkpoint_every
    do_ckpt = bool(every and s % every == 0 and s < ctx.stop_step)
    log = (s - st.start_step) % mon.log_every == 0
    return Due(do_eval, do_ckpt, log or s == ctx.stop_step, do_eval or do_ckpt or s == end or stop_received or log)


def adam_count(opt_state):
    """The optimizer's update count (optax ``ScaleByAdamState.count``) inside the chained state."""
    for leaf_path, leaf in jax.tree_util.tree_flatten_with_path(opt_state)[0]:
        if any(getattr(p, "name", None) == "count" for p in leaf_path):
            return leaf
    return jnp.asarray(-1)


def _phase_brief(ph: Phase) -> dict:
    return {"stage": ph.stage, "substage": ph.substage, "seq_len": ph.seq_len, "batch_size": ph.batch_size}


class MetricsHook:
    """``metrics.jsonl`` (one line per update, plus event lines) and the progress bar; fetches pending metrics."""

    def __init__(self, ctx: RunContext, st: LoopState, fh, bar) -> None:
        self.ctx, self.st, self.fh, self.bar = ctx, st, fh, bar
        self.guard = SkipGuard(ctx.tc.monitor.max_skipped, str(ctx.metrics_path))

    def emit(self, rec: dict) -> None:
        if self.ctx.main:
            self.fh.write(json.dumps(rec) + "\n")
            self.fh.flush()
        self.st.records.append(rec)

    def on_phase_start(self, ph: Phase, prev: Phase | None) -> None:
        ctx, st = self.ctx, self.st
        before = ctx.plan.tokens_seen(st.step)
        ev = {"event": "switch" if prev is not None else "start", "step": st.step, "tokens_seen": before,
              "from": _phase_brief(prev) if prev is not None else None, "to": _phase_brief(ph),
              "optimizer_count": int(ctx.fetch(adam_count(st.opt_state)))}
        self.emit(ev)
        if prev is not None and ctx.main:
            print(("\n" if not self.bar.disable else "") + f"sub-stage switch at step {st.step} ({before:,} "
                  f"tokens seen): {prev.name} (seq {prev.seq_len}, batch {prev.batch_size}) -> {ph.name} "
                  f"(seq {ph.seq_len}, batch {ph.batch_size}); params and optimizer state carried over",
                  file=sys.stderr, flush=True)

    def _record(self, step: int, ph: Phase, k: int, m: dict, dt: float, elapsed: float) -> dict:
        ctx, o = self.ctx, self.ctx.opt_cfg
        tps = ph.tokens_per_step / dt if dt > 0 else None
        rec = {"step": step, "loss": float(m["loss"]),
               "lr": float(learning_rate(step, o.peak_lr, o.warmup_steps, o.total_steps, o.final_lr_ratio)),
               "grad_norm": float(m["grad_norm"]), "tokens_seen": ctx.plan.tokens_seen(step + 1),
               "stage": ph.stage, "substage": ph.substage, "seq_len": ph.seq_len, "seconds": dt,
               "elapsed_seconds": elapsed, "tokens_per_second": tps,
               "epoch": (k + 1) * ph.batch_size / ph.n_sequences, "spike": bool(m["spike"]),
               "skipped": bool(m["skipped"]), "nonfinite": bool(m["nonfinite"]),
               "mfu": mfu(tps, ctx.model_cfg, ph.seq_len, ctx.n_chips, ctx.peak) if tps else None}
        if "z_loss" in m and ctx.num.z_loss:  # the optimised objective = loss + z-loss term
            rec["z_loss"], rec["objective"] = float(m["z_loss"]), float(m["objective"])
        return rec

    def flush(self) -> dict | None:
        """Fetch the pending updates' metrics (one transfer), write their records; the last record.

        Raises :class:`~xgen_train.loop.guards.NonFiniteLoss` (a ``FloatingPointError``) at a non-finite loss, and
        ``ProblemFound`` after ``max_skipped`` skipped updates in a row, after writing the records up to it."""
        st = self.st
        if not st.pending:
            return None
        got = self.ctx.fetch([m for *_, m in st.pending])
        now = time.perf_counter()
        dt = (now - st.t_mark) / len(st.pending)
        batch, st.pending = st.pending, []
        rec = None
        for i, ((step, ph, k, _), m) in enumerate(zip(batch, got)):
            rec = self._record(step, ph, k, m, dt, st.t_mark - st.loop_start + (i + 1) * dt)
            self.emit(rec)
            self.guard.check(rec)  # a non-finite loss, or max_skipped skipped in a row: ProblemFound
        self.bar.update(len(batch))
        st.t_mark = now
        return rec

    def after_update(self, ph: Phase, due: Due) -> None:
        self.st.last_val = None
        if due.sync:
            self.st.last_rec = self.flush()


class ValidationHook:
    """Validation loss on the phase's held-out sequences when due (event line ``val``).

    ``eval_fn(params, batch)`` returns the batch's mean loss (pre-training) or ``(ce_sum, count)`` (SFT, so the
    set's loss is the per-token mean over every scored token of the set)."""

    def __init__(self, ctx: RunContext, st: LoopState, eval_fn, emit: Callable[[dict], None]) -> None:
        self.ctx, self.st, self.eval_fn, self.emit = ctx, st, eval_fn, emit
        self._sets: dict[int, tuple[list, int] | None] = {}

    def evaluate(self, ph: Phase, step: int) -> dict | None:
        if ph.index not in self._sets:
            self._sets[ph.index] = self.ctx.feed.validation(ph, self.ctx.tc.monitor.eval_sequences)
        if self._sets[ph.index] is None:
            return None
        batches, n = self._sets[ph.index]
        out = self.ctx.fetch([self.eval_fn(self.st.params, b) for b in batches])  # one transfer for all
        if self.ctx.objective == "sft":
            val = float(np.sum([o[0] for o in out]) / max(np.sum([o[1] for o in out]), 1.0))
        else:
            val = float(np.mean(out))
        return {"event": "val", "step": step, "tokens_seen": self.ctx.plan.tokens_seen(step + 1), "stage": ph.stage,
                "substage": ph.substage, "seq_len": ph.seq_len, "val_loss": val, "val_sequences": n}

    def after_update(self, ph: Phase, due: Due) -> None:
        if due.eval:
            self.st.last_val = self.evaluate(ph, self.st.step - 1)
            if self.st.last_val is not None:
                self.emit(self.st.last_val)
            self.st.t_mark = time.perf_counter()


class LogHook:
    """The progress bar's postfix, or (no bar) a log line on stderr, every ``log_every`` updates and with a
    validation loss."""

    def __init__(self, ctx: RunContext, st: LoopState, bar) -> None:
        self.ctx, self.st, self.bar = ctx, st, bar

    def after_update(self, ph: Phase, due: Due) -> None:
        rec, val = self.st.last_rec, self.st.last_val
        if rec is None or not (due.log or val is not None):
            return
        msg = dict(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}", gnorm=f"{rec['grad_norm']:.2f}",
                   tok_s=f"{rec['tokens_per_second'] or 0:.0f}",
                   mfu="n/a" if rec["mfu"] is None else f"{100 * rec['mfu']:.1f}%")
        if val is not None:
            msg["val_loss"] = f"{val['val_loss']:.4f}"
        if not self.bar.disable:
            self.bar.set_postfix(msg, refresh=False)
        elif self.ctx.main:
            print(f"step {rec['step']} [{rec['stage']}/{rec['substage']}]: "
                  + " ".join(f"{a}={b}" for a, b in msg.items()), file=sys.stderr)


class CheckpointHook:
    """A checkpoint every ``checkpoint_every`` updates (not after a stop signal: the end of the run saves)."""

    def __init__(self, ctx: RunContext, st: LoopState, store: CheckpointStore, stop) -> None:
        self.ctx, self.st, self.store, self.stop = ctx, st, store, stop

    def meta_for(self, step_done: int) -> dict:
        tc = self.ctx.tc
        return make_meta(step_done, self.ctx.plan.position(step_done).to_dict(), self.ctx.run,
                         extra={"rng": {"data_seed": tc.data.seed, "init_seed": self.ctx.run["init_seed"],
                                        "note": "the update is deterministic; data order = f(seed, step)"},
                                "plan": self.ctx.plan.to_list()})

    def save(self) -> Path:
        st = self.st
        st.last_ckpt = self.store.save(st.step, st.params, st.opt_state, self.meta_for(st.step))
        return st.last_ckpt

    def after_update(self, ph: Phase, due: Due) -> None:
        if due.ckpt and not self.stop.received:
            self.save()
            self.st.t_mark = time.perf_counter()

    def at_end(self) -> None:
        """The final checkpoint (unless one is already at this step, or a finished run was only reopened)."""
        st = self.st
        if st.interrupted or st.step > st.start_step or st.resumed_from is None:
            if st.last_ckpt is None or int(st.last_ckpt.name.split("_")[1]) != st.step:
                self.save()
        else:
            st.last_ckpt = st.resumed_from  # resumed a finished run: nothing new to save


def default_hooks(ctx: RunContext, st: LoopState, fh, bar, eval_fn, ckpt: CheckpointHook) -> list:
    """Metrics (fetch first), validation, log line, checkpoint: the order the module doc's invariant needs."""
    metrics = MetricsHook(ctx, st, fh, bar)
    return [metrics, ValidationHook(ctx, st, eval_fn, metrics.emit), LogHook(ctx, st, bar), ckpt]
