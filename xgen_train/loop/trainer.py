"""The pre-training loop (SPEC §4): one run walks the curriculum (every stage and sub-stage of the shards).

Per global update ``s`` (0-based): phase ``plan.phase_of(s)`` (:mod:`xgen_train.loop.curriculum`), batch
``loader.batch_at(seed, s - phase.start_step)`` of that sub-stage -> loss = mean next-token cross-entropy of
``logits[:, :-1]`` against ``tokens[:, 1:]`` (float32, EOS tokens are ordinary targets, no masking) ->
gradients -> global-norm clip -> AdamW with ``learning_rate(s)``: one warm-up + cosine schedule over the
whole run (SPEC §4), model and optimizer state carried across sub-stage switches. Outputs under ``out_dir``:

* ``metrics.jsonl``: one JSON line per update, plus event lines (see :func:`train`).
* ``run.json``: the run configuration (the part a resume must match) and the plan.
* ``checkpoints/step_NNNNNNNN/``: :mod:`xgen_train.loop.checkpoint` (orbax + sha256 sidecar); every
  ``checkpoint_every`` updates, at the end, and on SIGTERM/SIGINT; the last ``keep_checkpoints`` kept.
* ``loss.png``: Figure 1 (:mod:`xgen_train.evaluate.lossplot`); ``summary.json``.

The pieces are small on purpose (step function, :class:`xgen_train.loop.curriculum.DataPosition`,
:class:`xgen_train.loop.checkpoint.CheckpointStore`, :func:`run_config` / :func:`config_differences`), so a
precision policy, a device mesh or a chunked loss can replace one without touching the others.
"""
from __future__ import annotations

import collections
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
import jax.numpy as jnp
import numpy as np
import optax

from xgen_data.errors import InputError, RefusedError
from xgen_data.store import fsutil
from xgen_train.evaluate.lossplot import plot_loss
from xgen_train.loop.checkpoint import (SIDECAR, CheckpointError, CheckpointStore, checkpoint_dirs, latest_checkpoint,
                                        load_checkpoint, load_init, make_meta, read_meta, verify_checkpoint)
from xgen_train.loop.curriculum import Phase, make_plan
from xgen_train.loop.data import ShardLoader, load_manifest
from xgen_train.model.numerics import NumericsOptions
from xgen_train.loop.optimizer import OptimizerConfig, learning_rate, make_optimizer
from xgen_train.loop.step import StepOptions, init_monitor, monitor_from_history
from xgen_train.loop.step import make_train_step as _make_step
from xgen_train.model.config import ModelConfig, count_parameters, get_config
from xgen_train.model.loss import make_loss_fn as _make_numerics_loss
from xgen_train.model.loss import next_token_loss
from xgen_train.model.model import init_params
from xgen_train.scale.distributed import is_main_process, maybe_initialize, process_info
from xgen_train.scale.flops import flops_per_token, mfu
from xgen_train.scale.flops import peak_flops as peak_flops_of
from xgen_train.scale.sharding import (batch_sharding, check_batch, describe_mesh, make_mesh, param_shardings,
                                       put_global, replicated, state_shardings)

__all__ = ["DEFAULT_BATCH_TOKENS", "SpikeDetector", "StopSignal", "config_differences", "make_eval_fn",
           "make_loss_fn", "make_train_step", "next_token_loss", "plot_loss", "run_config", "train"]

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
               numerics: dict | None = None) -> dict:
    """Everything that fixes the trajectory of a run; a resume must match it exactly (:func:`config_differences`).

    Not included (free to change on resume): ``steps`` (the cap), logging, checkpoint and eval cadence, the
    shards folder's path (its ``manifest.json`` sha256 identifies the data).
    ``data.manifest_file_sha256`` is the SHA-256 of the ``manifest.json`` file's bytes (not the manifest's own
    ``manifest_sha256`` field, which covers its other fields); runs written before the rename call it
    ``data.manifest_sha256`` and still resume (:func:`config_differences`).
    """
    return {"config_name": config_name, "model_config": cfg.to_dict(), "optimizer": opt_cfg.to_dict(),
            "data": {"manifest_file_sha256": manifest_file_sha256, "recipe": manifest.get("recipe"),
                     "manifest_seed": manifest.get("seed"), "stage": stage, "substage": substage,
                     "budget_fraction": float(budget_fraction)},
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
    """``"key: old -> new"`` for every leaf that differs between two :func:`run_config` dicts (dotted keys).

    An older run config's ``data.manifest_sha256`` (the same file hash, before its rename) is read as
    ``data.manifest_file_sha256``.
    """
    a, b = _flatten(old), _flatten(new)
    if "data.manifest_sha256" in a and "data.manifest_file_sha256" not in a:
        a["data.manifest_file_sha256"] = a.pop("data.manifest_sha256")
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


def _phase_brief(ph: Phase) -> dict:
    return {"stage": ph.stage, "substage": ph.substage, "seq_len": ph.seq_len, "batch_size": ph.batch_size}


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


def train(shards_dir: str | os.PathLike, out_dir: str | os.PathLike, config_name: str = "tiny",
          steps: int | None = None, batch_size: int | None = None, lr: float = 3e-4, warmup: int = 2000,
          seed: int = 0, stage: str | None = None, substage: str | None = None, log_every: int = 10, *,
          batch_tokens: int | None = None, total_steps: int | None = None, final_lr_ratio: float = 0.1,
          weight_decay: float = 0.1, clip_norm: float = 1.0, b1: float = 0.9, b2: float = 0.95,
          compute_dtype: str | None = None, init_seed: int | None = None, init: str | os.PathLike | None = None,
          checkpoint_every: int = 0, keep_checkpoints: int = 3, resume: bool | str | os.PathLike | None = None,
          budget_fraction: float = 1.0, eval_every: int = 0, eval_sequences: int = 64, verify: bool | None = None,
          progress: bool = True,
          plot: bool = True, spike_window: int = 128, spike_std: float = 6.0,
          stop: StopSignal | None = None, numerics: NumericsOptions | None = None, mesh: str | None = None,
          peak_flops: float | None = None, init_on: str = "auto") -> dict[str, Any]:
    """Pre-train a model on the curriculum of a shards directory (SPEC §3 model, SPEC §4 optimizer and stages).

    Args:
        shards_dir: ``xgen-shards`` directory (see :mod:`xgen_train.loop.data`).
        out_dir: output folder (created).
        config_name: key of :data:`xgen_train.model.config.CONFIGS`.
        steps: stop after this many updates in total (a cap; default: the whole plan). Does not change the
            learning-rate schedule, so a later ``--resume`` with a larger ``steps`` continues it smoothly.
        batch_size, batch_tokens: sequences per update (constant), or tokens per update (constant across
            sequence lengths; ``batch_tokens // seq_len`` sequences, must divide). Default
            ``batch_tokens=DEFAULT_BATCH_TOKENS``.
        lr, warmup: peak learning rate and linear warm-up updates (SPEC §4: 3e-4, 2,000).
        seed: data-order seed of ``batch_at(seed, step)``; also the init seed unless ``init_seed``.
        stage, substage: train only these (default: every stage and sub-stage, in manifest order).
        budget_fraction: train on this fraction of every sub-stage's budget (default 1: one full pass);
            :func:`xgen_train.loop.curriculum.make_plan`.
        log_every: fetch the device-side metrics every N updates (one transfer; no host sync in between), then
            write their ``metrics.jsonl`` lines (one per update) and refresh the progress bar / log line.
        total_steps: schedule length (default: the plan's total updates); the rate ends at
            ``final_lr_ratio * lr``. Part of the run config: fixed for the run.
        weight_decay, clip_norm, b1, b2: SPEC §4 AdamW/clipping numbers.
        compute_dtype: ``"float32"`` or ``"bfloat16"`` matmul operands (SPEC §3); a shorthand for
            ``numerics.precision`` (default None: ``numerics.precision``, whose ``auto`` is float32 on CPU,
            bfloat16 on GPU/TPU). Giving both with different values is a ValueError.
        init: start from these params instead of a random init: an xgen run/checkpoint folder or a Hugging
            Face folder (:func:`xgen_train.loop.checkpoint.load_init`); optimizer state starts fresh.
        checkpoint_every: also checkpoint every N updates (0: only at the end / on a signal).
        keep_checkpoints: keep the newest K complete checkpoints.
        resume: ``True`` = latest complete checkpoint under ``out_dir/checkpoints``; a path = that
            checkpoint; None/False = start fresh (refused when ``out_dir`` already holds checkpoints).
            The run config must equal the checkpoint's (else ValueError naming each difference).
        eval_every: validation loss every N updates (0: only at each sub-stage end and at the run's end), on
            the first ``eval_sequences`` held-out sequences of the current sub-stage (its
            ``"split": "validation"`` shards; skipped when it has none).
        verify: shard checks (:class:`xgen_train.loop.data.ShardLoader`): None = each shard's sha256 when first read;
            True = every sha256 and the token range up front; False = no sha256 check.
        progress: a tqdm bar on stderr when it is a terminal, else a log line every ``log_every`` updates;
            False: neither. plot: write ``loss.png`` (Figure 1).
        spike_window, spike_std: loss-spike rule (SPEC §4 Choice: 128 steps, 6 std).
        stop: a :class:`StopSignal` to watch (default: one installed for the duration of the call).
        numerics: :class:`xgen_train.model.numerics.NumericsOptions`: precision policy, attention kernel, chunked
            loss, z-loss, remat, document masking (EOS id from the manifest), gradient accumulation, spike skip
            (default: all defaults). Resolved for the backend and recorded in ``run.json`` (``compute_dtype``
            = the precision, ``numerics`` = the rest), so a resume with other numerics is refused.
        mesh: device mesh spec, e.g. ``"data=2,fsdp=2,tensor=2"`` (:func:`xgen_train.scale.sharding.parse_mesh`;
            default: every device on ``data``). Not part of the run config: a resume may use another mesh.
        peak_flops: peak FLOP/s of one chip for MFU (default: :data:`xgen_train.scale.flops.PEAK_FLOPS` by device
            kind; on a CPU MFU is then null).
        init_on: where a fresh random init is drawn (:func:`fresh_params`): ``host``, ``device`` or ``auto``
            (host up to :data:`HOST_INIT_MAX_BYTES` of float32 parameters, else device). Not part of the run
            config (a resume does not draw an init).

    The loop never waits for the device between updates: each update is dispatched asynchronously, the next
    batch is read and transferred (sharded along B) while the chip runs, and the metrics stay on the device
    until they are fetched in one transfer every ``log_every`` updates, before an evaluation or a
    checkpoint, at a sub-stage end and at the end; ``seconds``/``tokens_per_second``/``mfu`` of the updates
    of one such group are the group's average. A non-finite loss is seen when its group is fetched (the step
    itself never applies such an update); the records up to it are written, then FloatingPointError.
    Multi-host (:mod:`xgen_train.scale.distributed`): every process runs this function; only process 0 writes files.

    ``metrics.jsonl``: per update ``step`` (0-based global update index), ``loss`` (nats/token), ``lr``,
    ``grad_norm`` (pre-clip), ``tokens_seen`` (true cumulative count over the sub-stages), ``stage``,
    ``substage``, ``seq_len``, ``seconds``, ``elapsed_seconds``, ``tokens_per_second``, ``epoch`` (fraction of
    the sub-stage's pass), ``spike``, ``skipped``, ``nonfinite``, ``mfu`` (:mod:`xgen_train.scale.flops`; null without
    a known peak). Event lines carry ``event``: ``"start"``/``"switch"`` (``step`` = first
    update of the new sub-stage, ``tokens_seen`` before it, ``from``/``to``), ``"val"`` (``step`` = the
    update it follows, ``val_loss``, ``val_sequences``), ``"stop"`` (signal).

    Returns:
        Summary dict (also ``summary.json``): ``first_loss``, ``last_loss``, ``first_loss_mean10``,
        ``last_loss_mean10``, ``start_step``, ``steps`` (updates run now), ``final_step``, ``total_steps``
        (plan), ``schedule_steps``, ``tokens`` (this run), ``tokens_seen`` (total), ``phases``, ``switches``,
        ``val_loss`` (last), ``interrupted`` (signal name or None), timings, ``checkpoint``, ``metrics``, ``plot``.
    Raises:
        KeyError: unknown config. ShardFormatError: bad shards. CheckpointError: corrupt/incompatible
        checkpoint or init. ValueError: inconsistent arguments, or a resume whose settings differ.
        FloatingPointError: non-finite loss (metrics are written up to that update).
    """
    t_setup = time.perf_counter()
    maybe_initialize()  # multi-host start when the environment asks for it, before any device use
    main = is_main_process()
    cfg = get_config(config_name)
    if steps is not None and steps <= 0:
        raise InputError(f"steps must be > 0, got {steps}")
    if log_every <= 0 or eval_every < 0 or eval_sequences <= 0:
        raise InputError("log_every and eval_sequences must be > 0, eval_every >= 0")
    if batch_size is None and batch_tokens is None:
        batch_tokens = DEFAULT_BATCH_TOKENS
    manifest = load_manifest(shards_dir)
    manifest_sha = fsutil.sha256_file(os.path.join(shards_dir, "manifest.json"))
    plan = make_plan(manifest, batch_tokens=batch_tokens, batch_size=batch_size, stage=stage, substage=substage,
                     budget_fraction=budget_fraction)
    loaders: dict[int, ShardLoader] = {}

    def loader_for(ph: Phase) -> ShardLoader:
        if ph.index not in loaders:
            loaders[ph.index] = ShardLoader(shards_dir, ph.batch_size, stage=ph.stage, substage=ph.substage,
                                            verify=verify)
        return loaders[ph.index]

    for ph in plan.phases:  # check every sub-stage up front: a bad shard fails now, not hours in
        ld = loader_for(ph) if ph.steps else None
        if ld is not None and (ld.padded_vocab_size > cfg.vocab_size or ld.vocab_size > cfg.vocab_size):
            raise InputError(f"shards use vocab {ld.padded_vocab_size} but model {config_name!r} has "
                             f"vocab_size {cfg.vocab_size}")
        if ph.seq_len > cfg.max_positions:
            raise InputError(f"{ph.name}: seq_len {ph.seq_len} exceeds {config_name!r} max_positions "
                             f"{cfg.max_positions}")
    schedule_steps = total_steps or plan.total_steps
    if warmup > schedule_steps:
        raise InputError(f"warmup {warmup} exceeds the schedule length {schedule_steps} (the plan's updates or "
                         "total_steps); pass a smaller warmup (--warmup) for a short run")
    stop_step = plan.total_steps if steps is None else steps
    if stop_step > plan.total_steps:
        more = ""
        if budget_fraction < 1.0:
            full = make_plan(manifest, batch_tokens=batch_tokens, batch_size=batch_size, stage=stage,
                             substage=substage, budget_fraction=1.0).total_steps
            more = (f"; at budget fraction {budget_fraction:g} — the shards hold {full:,} updates at 1.0, so a "
                    f"longer run is a new run (another --out) with a larger --budget-fraction (a resume keeps its "
                    f"fraction: it fixes the schedule)")
        raise InputError(f"steps={stop_step} exceeds the plan's {plan.total_steps} updates (one pass over every "
                         f"selected sub-stage{more}); train fewer steps"
                         + ("" if more else ", or build shards with more data (a larger recipe budget)"))
    opt_cfg = OptimizerConfig(peak_lr=lr, warmup_steps=warmup, total_steps=schedule_steps,
                              final_lr_ratio=final_lr_ratio, b1=b1, b2=b2, weight_decay=weight_decay,
                              clip_norm=clip_norm)
    optimizer = make_optimizer(opt_cfg)
    num = _resolve_numerics(numerics, compute_dtype, manifest)
    for ph in plan.phases:
        if ph.batch_size % num.accum_steps:
            raise InputError(f"{ph.name}: batch of {ph.batch_size} sequences is not a multiple of "
                             f"accum_steps={num.accum_steps}")
    compute_dtype = num.precision
    dmesh = make_mesh(mesh)
    init_where = resolve_init_on(init_on, cfg)
    p_template = jax.eval_shape(lambda: init_params(cfg, 0))
    s_template = jax.eval_shape(optimizer.init, p_template)
    p_sh = param_shardings(p_template, dmesh, cfg)
    s_sh = state_shardings(s_template, p_template, dmesh)
    rep = replicated(dmesh)
    for ph in plan.phases:
        if ph.steps:
            check_batch(ph.batch_size, dmesh, what=f"{ph.name}: batch")
    peak = peak_flops_of(override=peak_flops)
    n_chips = dmesh.size
    init_seed = seed if init_seed is None else init_seed
    run = run_config(config_name=config_name, cfg=cfg, opt_cfg=opt_cfg, manifest_file_sha256=manifest_sha,
                     manifest=manifest, stage=stage, substage=substage, batch_tokens=batch_tokens,
                     batch_size=batch_size, seed=seed, init_seed=init_seed,
                     init=_describe_init(init) if init is not None else None, compute_dtype=compute_dtype,
                     budget_fraction=budget_fraction,
                     numerics={k: v for k, v in num.to_dict().items() if k != "precision"})

    out = Path(out_dir)
    if main:
        out.mkdir(parents=True, exist_ok=True)
    ckpt_root = out / "checkpoints"
    metrics_path = out / "metrics.jsonl"

    # ---- state: fresh, from --init, or resumed
    start_step = 0
    ckpt_dir = None
    for _, d in checkpoint_dirs(ckpt_root):
        if not (d / SIDECAR).is_file():
            print(f"note: ignoring {d}: no {SIDECAR} (an interrupted save); it is never loaded", file=sys.stderr)
    if resume:
        ckpt_dir = latest_checkpoint(ckpt_root) if resume is True else Path(resume)
        if ckpt_dir is None:
            raise InputError(f"resume requested but no complete checkpoint under {ckpt_root}")
    elif (earlier := latest_checkpoint(ckpt_root)) is not None:
        # a fresh run here would mix its checkpoints with an earlier run's (and --resume would pick theirs)
        raise RefusedError(f"{out}: holds checkpoints of an earlier run (latest {earlier.name}); pass --resume to "
                           "continue it, or choose another output folder")
    if ckpt_dir is not None:
        verify_checkpoint(ckpt_dir)  # every file against the sidecar, before trusting any of it
        diffs = config_differences(read_meta(ckpt_dir).get("run") or {}, run)
        if diffs:
            raise RefusedError(f"{ckpt_dir}: refusing to resume, the settings differ from the run's (old -> new):\n  "
                               + "\n  ".join(diffs) + "\nrerun with the original settings, or start a new run in "
                               "another --out folder")
        ck = load_checkpoint(ckpt_dir, opt_state_template=s_template, verify=False, shardings=(p_sh, s_sh))
        want = plan.position(ck.step).to_dict()
        if ck.meta.get("position") != want:
            raise CheckpointError(f"{ckpt_dir}: data position {ck.meta.get('position')} does not match the plan's "
                                  f"{want} for step {ck.step}")
        if ck.step > stop_step:
            raise InputError(f"{ckpt_dir}: checkpoint is at step {ck.step}, beyond steps={stop_step}")
        params, opt_state = ck.params, ck.opt_state  # restored straight into this mesh's layout
        start_step = ck.step
    elif init is not None:
        init_cfg, init_p = load_init(init)
        if init_cfg != cfg:
            diffs = config_differences(init_cfg.to_dict(), cfg.to_dict())
            raise InputError(f"{init}: its model config differs from {config_name!r} (init -> --config): "
                             + "; ".join(diffs))
        params = put_global(init_p, p_sh)
        opt_state = jax.jit(optimizer.init, out_shardings=s_sh)(params)
    else:
        params = fresh_params(cfg, init_seed, p_sh, init_where)
        opt_state = jax.jit(optimizer.init, out_shardings=s_sh)(params)
    run_info = {**run, "plan": plan.to_list(), "total_steps": plan.total_steps, "steps_cap": steps,
                "shards_dir": str(Path(shards_dir).resolve()), "n_params": count_parameters(cfg),
                "resumed_from": str(ckpt_dir) if ckpt_dir is not None else None,
                "mesh": describe_mesh(dmesh), **process_info(), "peak_flops": peak,
                "flops_per_token": {ph.name: flops_per_token(cfg, ph.seq_len) for ph in plan.phases},
                "settings": {"steps": steps, "log_every": log_every, "checkpoint_every": checkpoint_every,
                             "keep_checkpoints": keep_checkpoints, "eval_every": eval_every,
                             "eval_sequences": eval_sequences, "mesh": mesh, "peak_flops": peak_flops,
                             "init_on": init_on}}
    if main:
        fsutil.write_json(str(out / "run.json"), run_info)

    history = _read_metrics(metrics_path, start_step) if start_step else []
    step_opts = StepOptions(spike_window=spike_window, spike_std=spike_std, skip_spikes=num.skip_spikes,
                            accum_steps=num.accum_steps)
    past = [r["loss"] for r in history if "event" not in r][-spike_window:]
    monitor = jax.device_put(monitor_from_history(past, step_opts) if past else init_monitor(step_opts), rep)
    if main:
        with open(metrics_path, "w", encoding="utf-8") as fh:  # drop lines past the resume point
            fh.writelines(json.dumps(r) + "\n" for r in history)

    loss_fn = _make_numerics_loss(cfg, num)
    step_fn = jit_step(_make_step(loss_fn, optimizer, step_opts), shardings=(p_sh, s_sh, rep, batch_sharding(dmesh)))
    eval_fn = jax.jit(lambda p, t: loss_fn(p, t)[1]["ce"], in_shardings=(p_sh, None), out_shardings=rep)
    compile_seconds = 0.0

    def meta_for(step_done: int) -> dict:
        return make_meta(step_done, plan.position(step_done).to_dict(), run,
                         extra={"rng": {"data_seed": seed, "init_seed": init_seed,
                                        "note": "the update is deterministic; data order = f(seed, step)"},
                                "plan": plan.to_list()})

    val_cache: dict[int, tuple[list, int] | None] = {}
    b_sh = batch_sharding(dmesh)

    def val_set(ph: Phase):
        """Fixed validation batches of a sub-stage on the mesh: [n_batches] of int32 [B, L] (first sequences
        in index order), split along B when B divides by data*fsdp, else replicated."""
        if ph.index not in val_cache:
            val_cache[ph.index] = None
            if ph.validation_sequences:
                vl = ShardLoader(shards_dir, 1, stage=ph.stage, substage=ph.substage, verify=verify, split="validation")
                n = min(vl.n_sequences, eval_sequences)
                bs = min(ph.batch_size, n)
                n = n // bs * bs
                seqs = vl.sequences(np.arange(n)).astype(np.int32).reshape(n // bs, bs, ph.seq_len)
                split = bs % (dmesh.shape["data"] * dmesh.shape["fsdp"]) == 0
                val_cache[ph.index] = ([put_global(b, b_sh if split else rep) for b in seqs], n)
        return val_cache[ph.index]

    def evaluate(ph: Phase, step: int) -> dict | None:
        vs = val_set(ph)
        if vs is None:
            return None
        seqs, n = vs
        losses = _fetch([eval_fn(params, b) for b in seqs])  # one transfer for all batches
        return {"event": "val", "step": step, "tokens_seen": plan.tokens_seen(step + 1), "stage": ph.stage,
                "substage": ph.substage, "seq_len": ph.seq_len, "val_loss": float(np.mean(losses)),
                "val_sequences": n}

    print(f"plan: {plan.total_steps:,} updates ({plan.total_tokens:,} tokens) over {len(plan.phases)} sub-stage(s): "
          + ", ".join(f"{p.name} seq {p.seq_len} x {p.batch_size} for {p.steps:,}" for p in plan.phases)
          + f"; schedule {schedule_steps:,} updates; " + (f"from step {start_step}; " if start_step else "")
          + f"stopping at {stop_step:,}; mesh {describe_mesh(dmesh)} over {n_chips} {run_info['device_kind']} "
          + f"device(s), {run_info['process_count']} process(es)", file=sys.stderr, flush=True)
    from tqdm.auto import tqdm

    records: list[dict] = []
    switches: list[dict] = []
    interrupted = None
    last_ckpt = None
    bar_on = progress and sys.stderr.isatty() and main  # progress False: no bar and no log lines
    bar = tqdm(total=stop_step, initial=start_step, disable=not bar_on, desc=f"train {config_name}",
               unit="step", file=sys.stderr, dynamic_ncols=True)
    own_stop = stop is None
    stop = stop or StopSignal()
    store = CheckpointStore(ckpt_root, keep=keep_checkpoints)
    loop_start = time.perf_counter()
    s = start_step
    # updates dispatched but not yet fetched: (step, phase, index in phase, device metrics)
    pending: list[tuple[int, Phase, int, dict]] = []
    t_mark = [loop_start]  # when the oldest pending update was dispatched (after any non-update work)
    try:
        with (open(metrics_path, "a", encoding="utf-8") if main else _nullcontext()) as mfh, \
                (stop if own_stop else _nullcontext()):
            def emit(rec: dict) -> None:
                if main:
                    mfh.write(json.dumps(rec) + "\n")
                    mfh.flush()
                records.append(rec)

            def log_line(rec: dict, val: dict | None) -> None:
                msg = dict(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}", gnorm=f"{rec['grad_norm']:.2f}",
                           tok_s=f"{rec['tokens_per_second'] or 0:.0f}",
                           mfu="n/a" if rec["mfu"] is None else f"{100 * rec['mfu']:.1f}%")
                if val is not None:
                    msg["val_loss"] = f"{val['val_loss']:.4f}"
                if bar_on:
                    bar.set_postfix(msg, refresh=False)
                elif main and progress:
                    print(f"step {rec['step']} [{rec['stage']}/{rec['substage']}]: "
                          + " ".join(f"{a}={b}" for a, b in msg.items()), file=sys.stderr)

            def flush() -> dict | None:
                """Fetch the pending updates' metrics (one transfer), write their records; the last record."""
                if not pending:
                    return None
                got = _fetch([m for *_, m in pending])
                now = time.perf_counter()
                dt = (now - t_mark[0]) / len(pending)
                n_done = len(pending)
                batch, pending[:] = list(pending), []
                for i, ((step, ph, k, _), m) in enumerate(zip(batch, got)):
                    loss = float(m["loss"])
                    tps = ph.tokens_per_step / dt if dt > 0 else None
                    rec = {"step": step, "loss": loss,
                           "lr": float(learning_rate(step, lr, warmup, opt_cfg.total_steps, final_lr_ratio)),
                           "grad_norm": float(m["grad_norm"]), "tokens_seen": plan.tokens_seen(step + 1),
                           "stage": ph.stage, "substage": ph.substage, "seq_len": ph.seq_len, "seconds": dt,
                           "elapsed_seconds": t_mark[0] - loop_start + (i + 1) * dt, "tokens_per_second": tps,
                           "epoch": (k + 1) * ph.batch_size / ph.n_sequences, "spike": bool(m["spike"]),
                           "skipped": bool(m["skipped"]), "nonfinite": bool(m["nonfinite"]),
                           "mfu": mfu(tps, cfg, ph.seq_len, n_chips, peak) if tps else None}
                    if "z_loss" in m and num.z_loss:  # the optimised objective = loss + z-loss term
                        rec["z_loss"], rec["objective"] = float(m["z_loss"]), float(m["objective"])
                    emit(rec)
                    if not math.isfinite(loss):
                        bar.update(i + 1)
                        raise FloatingPointError(f"non-finite loss {loss} at step {step} (the update was skipped); "
                                                 f"see {metrics_path}")
                bar.update(n_done)
                t_mark[0] = now
                return rec

            prev: Phase | None = None
            for ph in plan.phases:
                if ph.end_step <= s or s >= stop_step or ph.steps == 0:
                    if ph.steps and ph.end_step <= s:
                        prev = ph
                    continue
                loader = loader_for(ph)
                if s == ph.start_step:  # entering the phase at its first update: log the switch
                    tokens_before = plan.tokens_seen(s)
                    ev = {"event": "switch" if prev is not None else "start", "step": s, "tokens_seen": tokens_before,
                          "from": _phase_brief(prev) if prev is not None else None, "to": _phase_brief(ph),
                          "optimizer_count": int(_fetch(_adam_count(opt_state)))}
                    emit(ev)
                    if prev is not None:
                        switches.append(ev)
                        msg = (f"sub-stage switch at step {s} ({tokens_before:,} tokens seen): {prev.name} "
                               f"(seq {prev.seq_len}, batch {prev.batch_size}) -> {ph.name} (seq {ph.seq_len}, "
                               f"batch {ph.batch_size}); params and optimizer state carried over")
                        if main:
                            print(("\n" if bar_on else "") + msg, file=sys.stderr, flush=True)
                t0 = time.perf_counter()
                tok_spec = jax.ShapeDtypeStruct((ph.batch_size, ph.seq_len), jnp.int32, sharding=b_sh)
                compiled = step_fn.lower(params, opt_state, monitor, tok_spec).compile()
                compile_seconds += time.perf_counter() - t0
                end = min(ph.end_step, stop_step)
                # the next batch, read and sent to the devices while the previous update runs (prefetch)
                next_batch = put_global(loader.batch_at(seed, s - ph.start_step)["tokens"], b_sh)
                t_mark[0] = time.perf_counter()
                while s < end:
                    k = s - ph.start_step
                    params, opt_state, monitor, m = compiled(params, opt_state, monitor, next_batch)  # async
                    pending.append((s, ph, k, m))
                    s += 1
                    val = None
                    do_eval = (eval_every and s % eval_every == 0) or s == ph.end_step or s == stop_step
                    do_ckpt = checkpoint_every and s % checkpoint_every == 0 and s < stop_step
                    if do_eval or do_ckpt or s == end or stop.received or (s - start_step) % log_every == 0:
                        rec = flush()
                        if do_eval:
                            val = evaluate(ph, s - 1)
                            if val is not None:
                                emit(val)
                            t_mark[0] = time.perf_counter()
                        if (s - start_step) % log_every == 0 or s == stop_step or val is not None:
                            log_line(rec, val)
                    if stop.received:
                        interrupted = stop.received
                        break
                    if do_ckpt:
                        last_ckpt = store.save(s, params, opt_state, meta_for(s))
                        t_mark[0] = time.perf_counter()
                    if s < end:
                        next_batch = put_global(loader.batch_at(seed, s - ph.start_step)["tokens"], b_sh)
                prev = ph
                if interrupted:
                    break
        if interrupted or s > start_step or ckpt_dir is None:
            if last_ckpt is None or int(last_ckpt.name.split("_")[1]) != s:
                last_ckpt = store.save(s, params, opt_state, meta_for(s))
        else:
            last_ckpt = ckpt_dir  # resumed a finished run: nothing new to save
        if interrupted:
            if main:
                with open(metrics_path, "a", encoding="utf-8") as mfh:
                    ev = {"event": "stop", "step": s, "tokens_seen": plan.tokens_seen(s), "signal": interrupted,
                          "checkpoint": str(last_ckpt)}
                    mfh.write(json.dumps(ev) + "\n")
                print(f"stopped by {interrupted} after step {s - 1}: checkpoint {last_ckpt}; continue with --resume",
                      file=sys.stderr, flush=True)
    finally:
        bar.close()
        store.close()
    loop_seconds = time.perf_counter() - loop_start - compile_seconds

    all_records = history + [r for r in records if r.get("event") != "stop"]
    plot_path = None
    if plot and main and any("event" not in r for r in all_records):
        plot_path = plot_loss(all_records, out / "loss.png",
                              title=f"{config_name}: loss over tokens seen, {len(plan.phases)} sub-stage(s)")["path"]
    train_recs = [r for r in records if "event" not in r]
    losses = [r["loss"] for r in train_recs]
    vals = [r for r in all_records if r.get("event") == "val"]
    n_run = len(train_recs)
    cur = plan.phase_of(min(max(s - 1, 0), plan.total_steps - 1))
    summary = {
        "config_name": config_name, "n_params": count_parameters(cfg), "stage": cur.stage,
        "substage": cur.substage, "seq_len": cur.seq_len, "batch_size": cur.batch_size,
        "batch_tokens": batch_tokens, "start_step": start_step, "steps": n_run, "final_step": s,
        "total_steps": plan.total_steps, "schedule_steps": schedule_steps,
        "phases": plan.to_list(),
        "switches": [{k: e[k] for k in ("step", "tokens_seen", "from", "to")} for e in switches],
        "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
        "first_loss_mean10": float(np.mean(losses[:10])) if losses else None,
        "last_loss_mean10": float(np.mean(losses[-10:])) if losses else None,
        "val_loss": vals[-1]["val_loss"] if vals else None,
        "tokens": sum(plan.phase_of(r["step"]).tokens_per_step for r in train_recs),
        "tokens_seen": plan.tokens_seen(s), "interrupted": interrupted,
        "seconds": loop_seconds, "compile_seconds": compile_seconds,
        "setup_seconds": loop_start - t_setup,
        "tokens_per_second": None, "spike_steps": [r["step"] for r in all_records if r.get("spike")],
        "checkpoint": str(last_ckpt), "metrics": str(metrics_path),
        "plot": str(plot_path) if plot_path else None,
    }
    if n_run and loop_seconds > 0:
        summary["tokens_per_second"] = summary["tokens"] / loop_seconds
        flops = sum(plan.phase_of(r["step"]).tokens_per_step * flops_per_token(cfg, r["seq_len"]) for r in train_recs)
        summary["mfu"] = flops / loop_seconds / (n_chips * peak) if peak else None
    summary.update(mesh=describe_mesh(dmesh), n_devices=n_chips, device_kind=run_info["device_kind"],
                   peak_flops=peak, process_count=run_info["process_count"])
    summary.setdefault("mfu", None)
    if main:
        fsutil.write_json(str(out / "summary.json"), summary)
    return summary


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def _resolve_numerics(numerics: NumericsOptions | None, compute_dtype: str | None, manifest: dict) -> NumericsOptions:
    """``numerics`` with ``compute_dtype`` folded in, ``eos_id`` from the manifest (doc masking), resolved."""
    import dataclasses

    from xgen_train.model.precision import as_policy

    num = numerics or NumericsOptions()
    if compute_dtype is not None:
        want = as_policy(compute_dtype).name
        if num.precision != "auto" and as_policy(num.precision).name != want:
            raise InputError(f"compute_dtype={compute_dtype!r} contradicts numerics.precision={num.precision!r}")
        num = dataclasses.replace(num, precision=want)
    if num.doc_mask and num.eos_id is None:
        num = dataclasses.replace(num, eos_id=int(manifest["eos_id"]))
    return num.resolved()


def _adam_count(opt_state):
    """The optimizer's update count (optax ``ScaleByAdamState.count``) inside the chained state."""
    for leaf_path, leaf in jax.tree_util.tree_flatten_with_path(opt_state)[0]:
        if any(getattr(p, "name", None) == "count" for p in leaf_path):
            return leaf
    return jnp.asarray(-1)
