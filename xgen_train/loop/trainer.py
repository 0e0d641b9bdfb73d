"""The training loop: pre-training over the curriculum (SPEC §4) or instruction tuning on SFT shards (SPEC §5).

Per global update ``s`` (0-based): phase ``plan.phase_of(s)`` (:mod:`xgen_train.loop.curriculum`), batch
``loader.batch_at(seed, s - phase.start_step)`` of that sub-stage (:mod:`xgen_train.loop.feed`) -> loss ->
gradients -> global-norm clip -> Adam(W) with ``learning_rate(s)``: one warm-up + cosine schedule over the
whole run, model and optimizer state carried across sub-stage switches. Pre-training's loss is the mean
next-token cross-entropy of ``logits[:, :-1]`` against ``tokens[:, 1:]`` (EOS is an ordinary target); SFT's
is the cross-entropy summed over response tokens and divided once by the batch's response-token count
(:mod:`xgen_train.model.sft_loss`, :func:`xgen_train.loop.step.token_sum_value_and_grad`). Which one runs is
told by the shards' manifest (:func:`shards_objective`).

The settings are one :class:`xgen_train.loop.config.TrainConfig`; :func:`run_training` reads as one page:
:func:`setup_run` (resolve the config, plan, mesh, optimizer), :func:`initial_state` (fresh, ``init`` or
resumed), :func:`write_run_json`, :func:`compile_fns`, then :func:`run_loop` / :func:`run_phase` dispatch
updates and call the hooks of :mod:`xgen_train.loop.hooks` (metrics, validation, log line, checkpoints) after
each, then the last checkpoint and :func:`summarize`. Outputs under ``out_dir``:

* ``metrics.jsonl``: one JSON line per update, plus event lines (see :func:`train`).
* ``run.json``: the config (``"config"``, what ``--resume`` reads back), the run configuration (the part a
  resume must match, :func:`run_config`) and the plan.
* ``checkpoints/step_NNNNNNNN/``: :mod:`xgen_train.loop.checkpoint` (orbax + sha256 sidecar); every
  ``checkpoint_every`` updates, at the end, and on SIGTERM/SIGINT; the last ``keep_checkpoints`` kept.
* ``loss.png``: Figure 1 (:mod:`xgen_train.loop.lossplot`); ``summary.json``.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import json
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax

from xgen_data.errors import InputError, RefusedError
from xgen_data.store import fsutil
from xgen_train.loop import guards, runlock
from xgen_train.loop.checkpoint import (
    INIT_CONFIG,
    SIDECAR,
    CheckpointError,
    CheckpointStore,
    checkpoint_dirs,
    latest_checkpoint,
    load_checkpoint,
    load_params,
    read_meta,
    resolve_model_config,
    verify_checkpoint,
)
from xgen_train.loop.config import TrainConfig
from xgen_train.loop.curriculum import Phase, Plan, make_plan
from xgen_train.loop.data import load_manifest
from xgen_train.loop.feed import Feed
from xgen_train.loop.hooks import CheckpointHook, LoopState, RunContext, adam_count, default_hooks, due_after
from xgen_train.loop.lossplot import plot_loss
from xgen_train.loop.optimizer import OptimizerConfig, make_optimizer
from xgen_train.loop.sft_data import ARRAYS as SFT_ARRAYS
from xgen_train.loop.sft_data import curriculum_manifest, is_sft_shards, read_sft_manifest
from xgen_train.loop.step import StepOptions, init_monitor, monitor_from_history, token_sum_value_and_grad
from xgen_train.loop.step import make_train_step as _make_step
from xgen_train.model.config import ModelConfig, count_parameters
from xgen_train.model.loss import make_loss_fn as _make_numerics_loss
from xgen_train.model.loss import next_token_loss
from xgen_train.model.model import init_params
from xgen_train.model.numerics import NumericsOptions
from xgen_train.model.precision import as_policy
from xgen_train.model.sft_loss import make_sft_loss_fn, response_token_count
from xgen_train.scale.distributed import is_main_process, maybe_initialize, process_info
from xgen_train.scale.flops import flops_per_token
from xgen_train.scale.flops import peak_flops as peak_flops_of
from xgen_train.scale.sharding import (
    batch_sharding,
    check_batch,
    describe_mesh,
    make_mesh,
    param_shardings,
    put_global,
    replicated,
    state_shardings,
)

__all__ = ["DEFAULT_BATCH_TOKENS", "SpikeDetector", "StopSignal", "TrainConfig", "config_differences",
           "make_eval_fn", "make_loss_fn", "make_train_step", "next_token_loss", "plot_loss", "run_config",
           "run_training", "shards_objective", "train"]

#: Tokens per update when neither batch_tokens nor batch_size is given (e.g. 8 x 256, 4 x 512, 2 x 1024).
DEFAULT_BATCH_TOKENS = 2048


class SpikeDetector:
    """Loss-spike flag of SPEC §4 (Choice): ``loss > mean + n_std * std`` of the previous ``window`` losses.

    The current loss is compared with the losses of the (up to) ``window`` preceding steps and then
    added to the window. No flag is raised before ``min_history`` losses have been seen, or for a
    non-finite loss (those are reported separately by the trainer).
    """

    def __init__(self, window: int = 128, n_std: float = 6.0, min_history: int = 16) -> None:
        if window < 2 or min_history < 2 or min_history > window:
            raise ValueError("need 2 <= min_history <= window")
        self.window, self.n_std, self.min_history = window, n_std, min_history
        self.history: collections.deque[float] = collections.deque(maxlen=window)

    def update(self, loss: float) -> bool:
        """Add ``loss``; return True if it is a spike relative to the preceding window."""
        spike = False
        if math.isfinite(loss):
            if len(self.history) >= self.min_history:
                hist = np.asarray(self.history, dtype=np.float64)
                spike = bool(loss > hist.mean() + self.n_std * hist.std())
            self.history.append(float(loss))
        return spike


def make_loss_fn(model):
    """``loss(params, tokens int32 [B, L]) -> float32 scalar`` for a :func:`build_model` pair."""

    def loss_fn(params, tokens):
        return next_token_loss(model.apply(params, tokens), tokens)

    return loss_fn


def make_train_step(model, optimizer: optax.GradientTransformation, opts: StepOptions = StepOptions(), *,
                    shardings: tuple | None = None):
    """Jit'ed ``step(params, opt_state, monitor, tokens) -> (params, opt_state, monitor, metrics)``.

    :func:`xgen_train.loop.step.make_train_step` on this model's next-token loss, compiled with ``params``,
    ``opt_state`` and ``monitor`` donated (do not reuse the arguments after the call). ``metrics`` holds
    device scalars ``loss``, ``grad_norm`` (before clipping), ``spike``, ``nonfinite``, ``skipped``.

    ``shardings``: ``(params, opt_state, replicated, batch)`` shardings over a device mesh
    (:mod:`xgen_train.scale.sharding`): inputs and outputs keep that layout (params and optimizer state stay
    sharded across updates; monitor and metrics replicated); None: plain ``jax.jit`` on one device.
    """
    return jit_step(_make_step(make_loss_fn(model), optimizer, opts), shardings)


def jit_step(fn, shardings: tuple | None = None):
    """``jax.jit`` of an un-jitted :func:`xgen_train.loop.step.make_train_step` function, donating params,
    optimizer state and monitor; ``shardings`` = ``(params, opt_state, replicated, batch)`` keeps inputs and
    outputs in that mesh layout (monitor and metrics replicated); None: plain one-device jit."""
    if shardings is None:
        return jax.jit(fn, donate_argnums=(0, 1, 2))
    p_sh, s_sh, rep, b_sh = shardings
    jitted = jax.jit(fn, in_shardings=(p_sh, s_sh, rep, b_sh), out_shardings=(p_sh, s_sh, rep, rep),
                     donate_argnums=(0, 1, 2))

    @functools.wraps(fn)
    def under_mesh(*args):  # traced under the mesh, so activations can be pinned (sharding.constrain_batch)
        with jax.set_mesh(rep.mesh):
            return jitted(*args)

    under_mesh.lower = lambda *args: _lower_under(jitted, rep.mesh, args)
    return under_mesh


def _lower_under(jitted, mesh, args):
    with jax.set_mesh(mesh):
        return jitted.lower(*args)


def make_eval_fn(model, shardings: tuple | None = None):
    """Jit'ed ``eval(params, tokens int32 [B, L]) -> float32`` mean next-token loss (no update).

    ``shardings``: ``(params, replicated)``: params in their mesh layout, the scalar loss replicated (the
    batch keeps whatever sharding it arrives with).
    """
    if shardings is None:
        return jax.jit(make_loss_fn(model))
    p_sh, rep = shardings
    return jax.jit(make_loss_fn(model), in_shardings=(p_sh, None), out_shardings=rep)


def _fetch(tree):
    """The loop's only device -> host transfer of metrics (one call per group of updates; tests count them)."""
    return jax.device_get(tree)


class StopSignal:
    """Context manager: while active, SIGTERM/SIGINT only set :attr:`received` (the loop finishes the
    current update, checkpoints and returns). A second signal of the same kind restores the default
    behaviour (so a second Ctrl-C interrupts at once). Outside the main thread it does nothing."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: str | None = None
        self._old: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.received is not None:
            signal.signal(signum, self._old.get(signum, signal.SIG_DFL))
        self.received = signal.Signals(signum).name
        print(f"\n{self.received} received: finishing the current update, then saving a checkpoint "
              "(send it again to stop at once)", file=sys.stderr, flush=True)

    def __enter__(self) -> "StopSignal":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def run_config(*, config_name: str, cfg: ModelConfig, opt_cfg: OptimizerConfig, manifest_file_sha256: str,
               manifest: dict,
               stage: str | None, substage: str | None, batch_tokens: int | None, batch_size: int | None, seed: int,
               init_seed: int, init: dict | None, compute_dtype: str, budget_fraction: float = 1.0,
               numerics: dict | None = None, sft: dict | None = None) -> dict:
    """Everything that fixes the trajectory of a run; a resume must match it exactly (:func:`config_differences`).

    Not included (free to change on resume): ``steps`` (the cap), logging, checkpoint and eval cadence, the
    shards folder's path (its ``manifest.json`` sha256 identifies the data).
    ``data.manifest_file_sha256`` is the SHA-256 of the ``manifest.json`` file's bytes (not the manifest's own
    ``manifest_sha256`` field, which covers its other fields). ``sft``: ``{"objective": "sft",
    "epochs": N}`` merged into ``data`` for an SFT run (``{"epochs": N}`` for pre-training over N > 1 passes;
    absent otherwise, so a one-pass pre-training record is unchanged).
    """
    return {"config_name": config_name, "model_config": cfg.to_dict(), "optimizer": opt_cfg.to_dict(),
            "data": {"manifest_file_sha256": manifest_file_sha256, "recipe": manifest.get("recipe"),
                     "manifest_seed": manifest.get("seed"), "stage": stage, "substage": substage,
                     "budget_fraction": float(budget_fraction), **(sft or {})},
            "batch": {"batch_tokens": batch_tokens, "batch_size": batch_size}, "seed": int(seed),
            "init_seed": int(init_seed), "init": init, "compute_dtype": str(compute_dtype), "numerics": numerics}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_differences(old: dict, new: dict) -> list[str]:
    """``"key: old -> new"`` for every leaf that differs between two :func:`run_config` dicts (dotted keys)."""
    a, b = _flatten(old), _flatten(new)
    return [f"{k}: {a.get(k, '(absent)')!r} -> {b.get(k, '(absent)')!r}" for k in sorted(set(a) | set(b))
            if a.get(k, "(absent)") != b.get(k, "(absent)")]


def _read_metrics(path: Path, before_step: int) -> list[dict]:
    """Records of an earlier run's metrics.jsonl that precede update ``before_step`` (kept on resume)."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            rec = json.loads(line)
            if rec["step"] < before_step:
                records.append(rec)
    return records


#: ``init_on="auto"`` draws a fresh init on the host up to this many bytes of float32 parameters (2 GiB,
#: ~537M parameters), on the devices above it (a 7B model would need a 27.6 GB host copy and minutes of
#: host-side random draws).
HOST_INIT_MAX_BYTES = 2 << 30


def resolve_init_on(init_on: str, cfg) -> str:
    """``host`` or ``device`` for ``init_on`` (``auto`` by :data:`HOST_INIT_MAX_BYTES`). Raises ValueError."""
    if init_on not in ("auto", "host", "device"):
        raise InputError(f"init_on must be auto, host or device, got {init_on!r}")
    if init_on == "auto":
        return "host" if 4 * count_parameters(cfg) <= HOST_INIT_MAX_BYTES else "device"
    return init_on


def fresh_params(cfg, seed: int, shardings, where: str):
    """A fresh random init (:func:`xgen_train.model.model.init_params`, SPEC §3) laid out as ``shardings``.

    ``host``: drawn op by op on the host CPU, then sent out shard by shard (:func:`put_global`): the same
    values whatever the mesh or chip; needs a full float32 host copy. ``device``: one jitted init with
    ``out_shardings``, so each device draws only its own shards (threefry is partitionable: the values do not
    depend on the mesh); they equal the host draw up to float rounding of the normal transform (not bit for
    bit across chip kinds). Returns a pytree of global ``jax.Array`` float32 parameters.
    """
    if where == "device":
        return jax.jit(lambda: init_params(cfg, seed), out_shardings=shardings)()
    with jax.default_device(jax.local_devices(backend="cpu")[0]):
        host_params = jax.device_get(init_params(cfg, seed))
    return put_global(host_params, shardings)


def _describe_init(path) -> dict:
    return {"path": str(Path(path).resolve())}


def train(shards_dir: str | os.PathLike | None, out_dir: str | os.PathLike, config: TrainConfig | str | None = None, *,
          resume: bool | str | os.PathLike | None = None, stop: StopSignal | None = None,
          compute_dtype: str | None = None, numerics: NumericsOptions | None = None, init_loader=None,
          init_config=None, **settings) -> dict[str, Any]:
    """Train a model on a shards folder: pre-training over the curriculum of ``xgen-shards`` (SPEC §3, §4), or
    instruction tuning on ``xgen-sft-shards`` (SPEC §5), recognised from the manifest.

    Args:
        shards_dir: the shards folder (None: ``config.data.shards_dir``).
        out_dir: output folder (created): ``metrics.jsonl``, ``run.json`` (the config and the run's
            trajectory settings), ``checkpoints/``, ``loss.png``, ``summary.json``.
        config: a :class:`xgen_train.loop.config.TrainConfig` (default: all defaults), or a model config name
            (shorthand for ``config_name=``); ``settings`` override
            its fields by flat name (``config_name``, ``steps``, ``batch_size``, ``batch_tokens``, ``lr``,
            ``warmup``, ``seed``, ``stage``, ``substage``, ``log_every``, ``total_steps``, ``final_lr_ratio``,
            ``weight_decay``, ``clip_norm``, ``b1``, ``b2``, ``init_seed``, ``init``, ``checkpoint_every``,
            ``keep_checkpoints``, ``budget_fraction``, ``epochs``, ``eval_every``, ``eval_sequences``,
            ``verify``, ``progress``, ``plot``, ``spike_window``, ``spike_std``, ``mesh``, ``peak_flops``,
            ``init_on``, and every :class:`NumericsOptions` field); their meaning is in the section classes.
        resume: ``True`` = latest complete checkpoint under ``out_dir/checkpoints``; a path = that checkpoint;
            None/False = start fresh (refused when ``out_dir`` already holds checkpoints). The run config must
            equal the checkpoint's (else ValueError naming each difference).
        stop: a :class:`StopSignal` to watch (default: one installed for the duration of the call).
        compute_dtype: ``"float32"``/``"bfloat16"``: shorthand for ``numerics.precision`` (contradicting it is
            a ValueError).
        numerics: the :class:`NumericsOptions` section as one object.
        init_loader, init_config: read the ``init`` setting into ``(ModelConfig, params)`` and into its
            ``ModelConfig`` alone (``--config init``): default :func:`xgen_train.loop.checkpoint.load_params` and
            :func:`~xgen_train.loop.checkpoint.checkpoint_model_config` (xgen run/checkpoint folders); ``xgen
            train`` passes :func:`xgen_train.export.hf.load_init` and :func:`~xgen_train.export.hf.init_model_config`,
            which also read a Hugging Face folder (HF conversion stays out of the loop and its checkpoints).

    The loop (:func:`run_training`) never waits for the device between updates: each update is dispatched
    asynchronously, the next batch is read and transferred while the chip runs, and metrics are fetched in
    one transfer every ``log_every`` updates and before an evaluation, a checkpoint, a phase end and the end
    (:mod:`xgen_train.loop.hooks`). Multi-host: every process runs it; only process 0 writes files.

    ``metrics.jsonl``: per update ``step``, ``loss`` (nats/token; SFT: per response token), ``lr``,
    ``grad_norm`` (pre-clip), ``tokens_seen``, ``stage``, ``substage``, ``seq_len``, ``seconds``,
    ``elapsed_seconds``, ``tokens_per_second``, ``epoch``, ``spike``, ``skipped``, ``nonfinite``, ``mfu``; event
    lines ``start``/``switch``, ``val`` (``val_loss``), ``stop`` (signal).

    Returns:
        the summary dict (also ``summary.json``), see :func:`summarize`.
    Raises:
        TypeError: an unknown setting. KeyError: unknown model config. ShardFormatError: bad shards.
        CheckpointError: corrupt/incompatible checkpoint or init. ValueError: inconsistent settings, or a resume
        whose settings differ. ProblemFound: a non-finite loss (``NonFiniteLoss``, also a ``FloatingPointError``),
        or ``max_skipped`` skipped updates in a row (metrics are written up to that update). CheckpointDiskFull:
        the disk filled during a save. RefusedError: another process holds the run folder. InputError: a
        numeric setting that is not finite or out of range.
    """
    if isinstance(config, str):
        settings.setdefault("config_name", config)
        config = None
    tc = config or TrainConfig()
    if shards_dir is not None:
        settings["shards_dir"] = os.fspath(shards_dir)
    if settings.get("init") is not None:
        settings["init"] = os.fspath(settings["init"])
    tc = tc.replace(**settings)
    if numerics is not None:
        tc = dataclasses.replace(tc, numerics=numerics)
    if compute_dtype is not None:
        tc = dataclasses.replace(tc, numerics=_fold_compute_dtype(tc.numerics, compute_dtype))
    return run_training(tc, out_dir, resume=resume, stop=stop, init_loader=init_loader, init_config=init_config)


def _fold_compute_dtype(num: NumericsOptions, compute_dtype: str) -> NumericsOptions:
    want = as_policy(compute_dtype).name
    if num.precision != "auto" and as_policy(num.precision).name != want:
        raise InputError(f"compute_dtype={compute_dtype!r} contradicts numerics.precision={num.precision!r}")
    return dataclasses.replace(num, precision=want)


def shards_objective(shards_dir: str | os.PathLike) -> str:
    """``"sft"`` for an ``xgen-sft-shards`` folder, else ``"pretrain"`` (its reader then checks it)."""
    return "sft" if is_sft_shards(shards_dir) else "pretrain"


def _check_settings(tc: TrainConfig) -> None:
    """Range checks of the settings the dataclasses leave open. Raises ValueError naming the setting."""
    s, mon = tc.schedule, tc.monitor
    if not tc.data.shards_dir:
        raise InputError("no shards folder given (shards_dir)")
    if s.steps is not None and s.steps <= 0:
        raise InputError(f"steps must be > 0, got {s.steps}")
    if mon.log_every <= 0 or mon.eval_every < 0 or mon.eval_sequences <= 0:
        raise InputError("log_every and eval_sequences must be > 0, eval_every >= 0")
    if tc.data.batch_tokens is not None and tc.data.batch_size is not None:
        raise InputError("give batch_tokens or batch_size, not both")
    guards.check_settings(**{k: v for k, v in tc.to_flat().items() if k in guards.RANGES})  # finite, in range


def _open_plan(tc: TrainConfig, objective: str) -> tuple[dict, str, Plan]:
    """``(manifest, sha256 of manifest.json, plan)`` of the run's shards (SFT: one phase, ``epochs`` passes)."""
    d = tc.data
    if objective == "sft":
        manifest = read_sft_manifest(d.shards_dir)
        curriculum = curriculum_manifest(manifest)
    else:
        manifest = curriculum = load_manifest(d.shards_dir)
    manifest_sha = fsutil.sha256_file(os.path.join(d.shards_dir, "manifest.json"))
    plan = make_plan(curriculum, batch_tokens=d.batch_tokens, batch_size=d.batch_size, stage=d.stage,
                     substage=d.substage, budget_fraction=d.budget_fraction, epochs=d.epochs)
    return manifest, manifest_sha, plan


def _check_plan(tc: TrainConfig, plan: Plan, feed: Feed, cfg: ModelConfig, manifest: dict, num, dmesh) -> int:
    """Open every phase's loader (a bad shard fails now, not hours in) and check the plan fits the model, the
    accumulation and the mesh; returns the step to stop at. Raises ValueError / ShardFormatError."""
    name = tc.model.config_name
    for ph in plan.phases:
        ld = feed.loader(ph) if ph.steps else None
        if ld is not None and (ld.padded_vocab_size > cfg.vocab_size or ld.vocab_size > cfg.vocab_size):
            raise InputError(f"shards use vocab {ld.padded_vocab_size} but model {name!r} has vocab_size "
                             f"{cfg.vocab_size}")
        if ph.seq_len > cfg.max_positions:
            raise InputError(f"{ph.name}: seq_len {ph.seq_len} exceeds {name!r} max_positions {cfg.max_positions}")
        if ph.batch_size % num.accum_steps:
            raise InputError(f"{ph.name}: batch of {ph.batch_size} sequences is not a multiple of "
                             f"accum_steps={num.accum_steps}")
        if ph.steps:
            check_batch(ph.batch_size, dmesh, what=f"{ph.name}: batch")
    stop_step = plan.total_steps if tc.schedule.steps is None else tc.schedule.steps
    if stop_step > plan.total_steps:
        _refuse_steps(tc, manifest, plan, stop_step)
    return stop_step


def _refuse_steps(tc: TrainConfig, manifest: dict, plan: Plan, stop_step: int) -> None:
    d = tc.data
    more = ""
    if d.budget_fraction < 1.0 and "stages" in manifest:
        full = make_plan(manifest, batch_tokens=d.batch_tokens, batch_size=d.batch_size, stage=d.stage,
                         substage=d.substage, budget_fraction=1.0, epochs=d.epochs).total_steps
        more = (f"; at budget fraction {d.budget_fraction:g} — the shards hold {full:,} updates at 1.0, so a "
                f"longer run is a new run (another --out) with a larger --budget-fraction (a resume keeps its "
                f"fraction: it fixes the schedule)")
    raise InputError(f"steps={stop_step} exceeds the plan's {plan.total_steps} updates (one pass over every "
                     f"selected sub-stage{more}); train fewer steps"
                     + ("" if more else ", or build shards with more data (a larger recipe budget)"))


def _optimizer_config(tc: TrainConfig, plan: Plan) -> OptimizerConfig:
    o, s = tc.optimizer, tc.schedule
    schedule_steps = s.total_steps or plan.total_steps
    if s.warmup > schedule_steps:
        raise InputError(f"warmup {s.warmup} exceeds the schedule length {schedule_steps} (the plan's updates or "
                         "total_steps); pass a smaller warmup (--warmup) for a short run")
    return OptimizerConfig(peak_lr=o.lr, warmup_steps=s.warmup, total_steps=schedule_steps,
                           final_lr_ratio=s.final_lr_ratio, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay,
                           clip_norm=o.clip_norm)


def _trajectory(tc: TrainConfig, objective: str, cfg: ModelConfig, opt_cfg: OptimizerConfig, manifest: dict,
                manifest_sha: str, num) -> dict:
    """:func:`run_config` of ``tc``: what a resume must match (SFT adds its objective and epochs; pre-training
    its epochs when not 1)."""
    d, m = tc.data, tc.model
    return run_config(config_name=m.config_name, cfg=cfg, opt_cfg=opt_cfg, manifest_file_sha256=manifest_sha,
                      manifest=manifest, stage=d.stage, substage=d.substage, batch_tokens=d.batch_tokens,
                      batch_size=d.batch_size, seed=d.seed, init_seed=d.seed if m.init_seed is None else m.init_seed,
                      init=_describe_init(m.init) if m.init is not None else None, compute_dtype=num.precision,
                      budget_fraction=d.budget_fraction,
                      numerics={k: v for k, v in num.to_dict().items() if k != "precision"},
                      sft={"objective": "sft", "epochs": d.epochs} if objective == "sft"
                      else ({"epochs": d.epochs} if d.epochs != 1 else None))


def setup_run(tc: TrainConfig, out_dir: str | os.PathLike, init_config=None) -> tuple[RunContext, Any, Any]:
    """Resolve ``tc`` against its shards and build the run's fixed parts.

    Returns ``(ctx, optimizer, shardings)`` with ``shardings = (params, opt_state, replicated, batch, templates)``.
    """
    _check_settings(tc)
    objective = shards_objective(tc.data.shards_dir)
    tc = tc.resolved(objective)
    cfg = resolve_model_config(tc.model.config_name, tc.model.init, init_config)  # a named config, or "init": the init's own
    manifest, manifest_sha, plan = _open_plan(tc, objective)
    num = _resolve_numerics(tc.numerics, None, manifest, objective)
    tc = dataclasses.replace(tc, numerics=num)
    dmesh = make_mesh(tc.model.mesh)
    rep, b_sh = replicated(dmesh), batch_sharding(dmesh)
    feed = Feed(tc.data.shards_dir, objective, tc.data.verify, tc.data.seed, b_sh, rep,
                dmesh.shape["data"] * dmesh.shape["fsdp"])
    stop_step = _check_plan(tc, plan, feed, cfg, manifest, num, dmesh)
    opt_cfg = _optimizer_config(tc, plan)
    optimizer = make_optimizer(opt_cfg)
    p_template = jax.eval_shape(lambda: init_params(cfg, 0))
    s_template = jax.eval_shape(optimizer.init, p_template)
    p_sh = param_shardings(p_template, dmesh, cfg)
    s_sh = state_shardings(s_template, p_template, dmesh)
    ctx = RunContext(tc=tc, objective=objective, out=Path(out_dir), main=is_main_process(), model_cfg=cfg,
                     plan=plan, opt_cfg=opt_cfg, num=num,
                     run=_trajectory(tc, objective, cfg, opt_cfg, manifest, manifest_sha, num), feed=feed,
                     stop_step=stop_step, schedule_steps=opt_cfg.total_steps,
                     peak=peak_flops_of(override=tc.monitor.peak_flops), n_chips=dmesh.size, fetch=_fetch_late,
                     dmesh=dmesh)
    return ctx, optimizer, (p_sh, s_sh, rep, b_sh, (p_template, s_template))


def _fetch_late(tree):
    return _fetch(tree)  # looked up at call time, so a test can wrap the module's _fetch


def _checkpoint_to_resume(ckpt_root: Path, out: Path, resume) -> Path | None:
    for _, d in checkpoint_dirs(ckpt_root):
        if not (d / SIDECAR).is_file():
            print(f"note: ignoring {d}: no {SIDECAR} (an interrupted save); it is never loaded", file=sys.stderr)
    if resume:
        ckpt_dir = latest_checkpoint(ckpt_root) if resume is True else Path(resume)
        if ckpt_dir is None:
            raise InputError(f"resume requested but no complete checkpoint under {ckpt_root}")
        return ckpt_dir
    if (earlier := latest_checkpoint(ckpt_root)) is not None:
        # a fresh run here would mix its checkpoints with an earlier run's (and --resume would pick theirs)
        raise RefusedError(f"{out}: holds checkpoints of an earlier run (latest {earlier.name}); pass --resume to "
                           "continue it, or choose another output folder")
    return None


def _resumed_state(ctx: RunContext, ckpt_dir: Path, shardings) -> tuple[Any, Any, int]:
    verify_checkpoint(ckpt_dir)  # every file against the sidecar, before trusting any of it
    diffs = config_differences(read_meta(ckpt_dir).get("run") or {}, ctx.run)
    if diffs:
        raise RefusedError(f"{ckpt_dir}: refusing to resume, the settings differ from the run's (old -> new):\n  "
                           + "\n  ".join(diffs) + "\nrerun with the original settings, or start a new run in "
                           "another --out folder")
    p_sh, s_sh, _, _, (_, s_template) = shardings
    ck = load_checkpoint(ckpt_dir, opt_state_template=s_template, verify=False, shardings=(p_sh, s_sh))
    want = ctx.plan.position(ck.step).to_dict()
    if ck.meta.get("position") != want:
        raise CheckpointError(f"{ckpt_dir}: data position {ck.meta.get('position')} does not match the plan's "
                              f"{want} for step {ck.step}")
    if ck.step > ctx.stop_step:
        raise InputError(f"{ckpt_dir}: checkpoint is at step {ck.step}, beyond steps={ctx.stop_step}")
    return ck.params, ck.opt_state, ck.step  # restored straight into this mesh's layout


def _first_state(ctx: RunContext, optimizer, shardings, init_loader=None) -> tuple[Any, Any]:
    """Params and a fresh optimizer state: from ``init`` (checked against the model config) or a random init."""
    p_sh, s_sh = shardings[0], shardings[1]
    m, cfg = ctx.tc.model, ctx.model_cfg
    if m.init is not None:
        init_cfg, init_p = (init_loader or load_params)(m.init)
        if init_cfg != cfg:
            diffs = config_differences(init_cfg.to_dict(), cfg.to_dict())
            raise InputError(f"{m.init}: its model config differs from {m.config_name!r} (init -> --config): "
                             + "; ".join(diffs) + f"; --config {INIT_CONFIG} trains the init's own config")
        params = put_global(init_p, p_sh)
    else:
        params = fresh_params(cfg, ctx.run["init_seed"], p_sh, resolve_init_on(m.init_on, cfg))
    return params, jax.jit(optimizer.init, out_shardings=s_sh)(params)


def initial_state(ctx: RunContext, optimizer, shardings, resume, init_loader=None) -> LoopState:
    """Fresh, from ``init``, or resumed (metrics of the earlier run up to the checkpoint kept, the spike
    monitor replayed from them)."""
    ckpt_dir = _checkpoint_to_resume(ctx.out / "checkpoints", ctx.out, resume)
    if ckpt_dir is not None:
        params, opt_state, start = _resumed_state(ctx, ckpt_dir, shardings)
    else:
        (params, opt_state), start = _first_state(ctx, optimizer, shardings, init_loader), 0
    history = _read_metrics(ctx.metrics_path, start) if start else []
    mon = ctx.tc.monitor
    past = [r["loss"] for r in history if "event" not in r][-mon.spike_window:]
    opts = _step_options(ctx)
    monitor = jax.device_put(monitor_from_history(past, opts) if past else init_monitor(opts), shardings[2])
    return LoopState(params, opt_state, monitor, step=start, start_step=start, resumed_from=ckpt_dir,
                     history=history)


def _step_options(ctx: RunContext) -> StepOptions:
    mon = ctx.tc.monitor
    return StepOptions(spike_window=mon.spike_window, spike_std=mon.spike_std, skip_spikes=ctx.num.skip_spikes,
                       accum_steps=ctx.num.accum_steps)


def write_run_json(ctx: RunContext, st: LoopState) -> dict:
    """``run.json``: the config (what ``--resume`` reads back), the run config, the plan and the setup."""
    tc, cfg, dmesh = ctx.tc, ctx.model_cfg, ctx.dmesh
    s, mon, ck = tc.schedule, tc.monitor, tc.checkpointing
    info = {**ctx.run, "objective": ctx.objective, "plan": ctx.plan.to_list(), "total_steps": ctx.plan.total_steps,
            "steps_cap": s.steps, "shards_dir": str(Path(tc.data.shards_dir).resolve()),
            "n_params": count_parameters(cfg),
            "resumed_from": str(st.resumed_from) if st.resumed_from is not None else None,
            "mesh": describe_mesh(dmesh), **process_info(), "peak_flops": ctx.peak,
            "flops_per_token": {ph.name: flops_per_token(cfg, ph.seq_len) for ph in ctx.plan.phases},
            "settings": {"steps": s.steps, "log_every": mon.log_every, "checkpoint_every": ck.checkpoint_every,
                         "keep_checkpoints": ck.keep_checkpoints, "eval_every": mon.eval_every,
                         "eval_sequences": mon.eval_sequences, "mesh": tc.model.mesh, "peak_flops": mon.peak_flops,
                         "init_on": tc.model.init_on},
            "config": tc.to_dict()}
    if ctx.main:
        ctx.out.mkdir(parents=True, exist_ok=True)
        fsutil.write_json(str(ctx.out / "run.json"), info)
        with open(ctx.metrics_path, "w", encoding="utf-8") as fh:  # drop lines past the resume point
            fh.writelines(json.dumps(r) + "\n" for r in st.history)
    return info


def compile_fns(ctx: RunContext, optimizer, shardings):
    """``(step_fn, eval_fn)`` of the objective, jitted over the mesh (:func:`jit_step`)."""
    p_sh, s_sh, rep, b_sh, _ = shardings
    opts = _step_options(ctx)
    if ctx.objective == "sft":
        loss_sum = make_sft_loss_fn(ctx.model_cfg, ctx.num)
        vg = token_sum_value_and_grad(loss_sum, response_token_count, ctx.num.accum_steps)
        step = _make_step(loss_sum, optimizer, opts, value_and_grad=vg)
        b_tree = {k: b_sh for k in SFT_ARRAYS}
        evaluate = jax.jit(lambda p, b: (loss_sum(p, b)[1]["ce"], response_token_count(b)),
                           in_shardings=(p_sh, None), out_shardings=rep)
        return jit_step(step, shardings=(p_sh, s_sh, rep, b_tree)), evaluate
    loss_fn = _make_numerics_loss(ctx.model_cfg, ctx.num)
    step_fn = jit_step(_make_step(loss_fn, optimizer, opts), shardings=(p_sh, s_sh, rep, b_sh))
    eval_fn = jax.jit(lambda p, t: loss_fn(p, t)[1]["ce"], in_shardings=(p_sh, None), out_shardings=rep)
    return step_fn, eval_fn


def _announce(ctx: RunContext, st: LoopState, info: dict) -> None:
    plan = ctx.plan
    print(f"plan: {plan.total_steps:,} updates ({plan.total_tokens:,} tokens) over {len(plan.phases)} sub-stage(s): "
          + ", ".join(f"{p.name} seq {p.seq_len} x {p.batch_size} for {p.steps:,}" for p in plan.phases)
          + f"; schedule {ctx.schedule_steps:,} updates; " + (f"from step {st.start_step}; " if st.start_step else "")
          + f"stopping at {ctx.stop_step:,}; mesh {describe_mesh(ctx.dmesh)} over {ctx.n_chips} "
          + f"{info['device_kind']} device(s), {info['process_count']} process(es)", file=sys.stderr, flush=True)


def run_phase(ctx: RunContext, st: LoopState, ph: Phase, step_fn, hooks: list, stop: StopSignal) -> None:
    """Updates of one phase from ``st.step`` up to its end or the stop step; hooks after each update."""
    t0 = time.perf_counter()
    compiled = step_fn.lower(st.params, st.opt_state, st.monitor, ctx.feed.spec(ph)).compile()
    st.compile_seconds += time.perf_counter() - t0
    end = min(ph.end_step, ctx.stop_step)
    batch = ctx.feed.device_batch(ph, st.step - ph.start_step)  # later ones are read while the chip runs
    st.t_mark = time.perf_counter()
    while st.step < end:
        k = st.step - ph.start_step
        st.params, st.opt_state, st.monitor, m = compiled(st.params, st.opt_state, st.monitor, batch)  # async
        st.pending.append((st.step, ph, k, m))
        st.step += 1
        due = due_after(ctx, st, ph, end, stop.received is not None)
        for hook in hooks:
            hook.after_update(ph, due)
        if stop.received:
            st.interrupted = stop.received
            return
        if st.step < end:
            batch = ctx.feed.device_batch(ph, st.step - ph.start_step)


def run_loop(ctx: RunContext, st: LoopState, step_fn, hooks: list, stop: StopSignal) -> None:
    """Every phase of the plan from ``st.step`` on, in order (nanoGPT-style: one page)."""
    prev: Phase | None = None
    for ph in ctx.plan.phases:
        if ph.end_step <= st.step or st.step >= ctx.stop_step or ph.steps == 0:
            if ph.steps and ph.end_step <= st.step:
                prev = ph
            continue
        if st.step == ph.start_step:  # entering the phase at its first update: log the switch
            hooks[0].on_phase_start(ph, prev)
        run_phase(ctx, st, ph, step_fn, hooks, stop)
        prev = ph
        if st.interrupted:
            return


@runlock.holds_run_lock  # one writer per run folder: a second is refused naming the first
def run_training(tc: TrainConfig, out_dir: str | os.PathLike, *, resume: bool | str | os.PathLike | None = None,
                 stop: StopSignal | None = None, init_loader=None, init_config=None) -> dict[str, Any]:
    """Set up, run the loop with the default hooks, save the last checkpoint, plot, summarise (see :func:`train`)."""
    t_setup = time.perf_counter()
    maybe_initialize()  # multi-host start when the environment asks for it, before any device use
    ctx, optimizer, shardings = setup_run(tc, out_dir, init_config)
    st = initial_state(ctx, optimizer, shardings, resume, init_loader)
    info = write_run_json(ctx, st)
    step_fn, eval_fn = compile_fns(ctx, optimizer, shardings)
    _announce(ctx, st, info)
    from tqdm.auto import tqdm

    bar = tqdm(total=ctx.stop_step, initial=st.start_step, desc=f"train {tc.model.config_name}", unit="step",
               disable=not (tc.monitor.progress and sys.stderr.isatty() and ctx.main), file=sys.stderr,
               dynamic_ncols=True)
    own_stop, stop = stop is None, stop or StopSignal()
    store = CheckpointStore(ctx.out / "checkpoints", keep=tc.checkpointing.keep_checkpoints)
    ckpt = CheckpointHook(ctx, st, store, stop)
    st.loop_start = time.perf_counter()
    try:
        with (open(ctx.metrics_path, "a", encoding="utf-8") if ctx.main else _nullcontext()) as fh, \
                (stop if own_stop else _nullcontext()):
            run_loop(ctx, st, step_fn, default_hooks(ctx, st, fh, bar, eval_fn, ckpt), stop)
        ckpt.at_end()
        if st.interrupted:
            _record_stop(ctx, st)
    finally:
        bar.close()
        store.close()
    return summarize(ctx, st, info, t_setup)


def _record_stop(ctx: RunContext, st: LoopState) -> None:
    if ctx.main:
        with open(ctx.metrics_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"event": "stop", "step": st.step, "tokens_seen": ctx.plan.tokens_seen(st.step),
                                 "signal": st.interrupted, "checkpoint": str(st.last_ckpt)}) + "\n")
    print(f"stopped by {st.interrupted} after step {st.step - 1}: checkpoint {st.last_ckpt}; continue with --resume",
          file=sys.stderr, flush=True)


def summarize(ctx: RunContext, st: LoopState, info: dict, t_setup: float) -> dict[str, Any]:
    """``loss.png`` (Figure 1) and the summary (also ``summary.json``) of the whole run, a resumed one included
    (the records of the earlier sessions are in ``metrics.jsonl``): ``first_loss``, ``last_loss``, their means
    over 10 updates, ``switches``, ``spike_steps``, ``val_loss`` (last), ``final_step``, ``tokens_seen``,
    ``total_steps`` (plan), ``schedule_steps``, ``phases``; and of this session (``start_step`` onwards):
    ``steps``, ``tokens``, timings, tokens per second and MFU; ``interrupted``, ``checkpoint``, ``metrics``,
    ``plot``, ``objective``."""
    plan, cfg, s = ctx.plan, ctx.model_cfg, st.step
    loop_seconds = time.perf_counter() - st.loop_start - st.compile_seconds
    all_records = st.history + [r for r in st.records if r.get("event") != "stop"]
    plot_path = None
    if ctx.tc.monitor.plot and ctx.main and any("event" not in r for r in all_records):
        what = "response loss" if ctx.objective == "sft" else "loss"
        plot_path = plot_loss(all_records, ctx.out / "loss.png", title=f"{ctx.tc.model.config_name}: {what} over "
                              f"tokens seen, {len(plan.phases)} sub-stage(s)")["path"]
    train_recs = [r for r in st.records if "event" not in r]  # this session's updates
    losses = [r["loss"] for r in all_records if "event" not in r and "loss" in r]  # the whole run's
    vals = [r for r in all_records if r.get("event") == "val"]
    cur = plan.phase_of(min(max(s - 1, 0), plan.total_steps - 1))
    summary = {
        "config_name": ctx.tc.model.config_name, "objective": ctx.objective, "n_params": count_parameters(cfg),
        "stage": cur.stage, "substage": cur.substage, "seq_len": cur.seq_len, "batch_size": cur.batch_size,
        "batch_tokens": ctx.tc.data.batch_tokens, "start_step": st.start_step, "steps": len(train_recs),
        "final_step": s, "total_steps": plan.total_steps, "schedule_steps": ctx.schedule_steps,
        "phases": plan.to_list(),
        "switches": [{k: e[k] for k in ("step", "tokens_seen", "from", "to")} for e in all_records
                     if e.get("event") == "switch"],
        "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
        "first_loss_mean10": float(np.mean(losses[:10])) if losses else None,
        "last_loss_mean10": float(np.mean(losses[-10:])) if losses else None,
        "val_loss": vals[-1]["val_loss"] if vals else None,
        "tokens": sum(plan.phase_of(r["step"]).tokens_per_step for r in train_recs),
        "tokens_seen": plan.tokens_seen(s), "interrupted": st.interrupted,
        "seconds": loop_seconds, "compile_seconds": st.compile_seconds, "setup_seconds": st.loop_start - t_setup,
        "tokens_per_second": None, "spike_steps": [r["step"] for r in all_records if r.get("spike")],
        "checkpoint": str(st.last_ckpt), "metrics": str(ctx.metrics_path),
        "plot": str(plot_path) if plot_path else None,
    }
    if train_recs and loop_seconds > 0:
        summary["tokens_per_second"] = summary["tokens"] / loop_seconds
        flops = sum(plan.phase_of(r["step"]).tokens_per_step * flops_per_token(cfg, r["seq_len"]) for r in train_recs)
        summary["mfu"] = flops / loop_seconds / (ctx.n_chips * ctx.peak) if ctx.peak else None
    summary.update(mesh=describe_mesh(ctx.dmesh), n_devices=ctx.n_chips, device_kind=info["device_kind"],
                   peak_flops=ctx.peak, process_count=info["process_count"])
    summary.setdefault("mfu", None)
    if ctx.main:
        fsutil.write_json(str(ctx.out / "summary.json"), summary)
    return summary


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def _resolve_numerics(numerics: NumericsOptions | None, compute_dtype: str | None, manifest: dict,
                      objective: str = "pretrain") -> NumericsOptions:
    """``numerics`` with ``compute_dtype`` folded in, ``eos_id`` from the manifest (doc masking), resolved.

    SFT masks attention by its segment ids, so ``doc_mask`` (EOS-based) is off there."""
    num = numerics or NumericsOptions()
    if compute_dtype is not None:
        num = _fold_compute_dtype(num, compute_dtype)
    if objective == "sft" and num.doc_mask:
        raise InputError("doc_mask does not apply to SFT shards: their segment ids already mask attention")
    if num.doc_mask and num.eos_id is None:
        num = dataclasses.replace(num, eos_id=int(manifest["eos_id"]))
    return num.resolved()


_adam_count = adam_count
