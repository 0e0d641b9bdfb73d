"""The pre-training loop (SPEC §4): jit'ed AdamW steps over deterministic shard batches.

Per update ``s`` (0-based): batch ``loader.batch_at(seed, s)`` -> loss = mean next-token cross-entropy
of ``logits[:, :-1]`` against ``tokens[:, 1:]`` (float32, EOS tokens are ordinary targets, no masking)
-> gradients -> global-norm clip -> AdamW with ``learning_rate(s)``. Outputs under ``out_dir``:

* ``metrics.jsonl``: one JSON line per update (see :func:`train`).
* ``run.json``: the arguments of the run.
* ``checkpoints/step_NNNNNNNN/``: :mod:`xgen_train.checkpoint` directories (at the end, and every
  ``checkpoint_every`` updates if set). ``NNNNNNNN`` = updates applied.
* ``loss.png``: the loss curve (spikes marked).
"""
from __future__ import annotations

import collections
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from xgen_train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from xgen_train.config import count_parameters, get_config
from xgen_train.data import ShardLoader
from xgen_train.model import build_model, init_params
from xgen_train.optimizer import OptimizerConfig, learning_rate, make_optimizer

__all__ = ["SpikeDetector", "make_loss_fn", "make_train_step", "next_token_loss", "plot_loss", "train"]


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


def next_token_loss(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy in nats (float32 scalar).

    Args:
        logits: float ``[B, L, V]`` from the model on the full sequence ``tokens``.
        tokens: int ``[B, L]``; position ``t`` is scored on predicting ``tokens[:, t+1]``, so there are
            ``B * (L - 1)`` terms. EOS is a normal target.
    """
    logits = logits[:, :-1].astype(jnp.float32)
    targets = tokens[:, 1:]
    logz = jax.nn.logsumexp(logits, axis=-1)
    gold = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return jnp.mean(logz - gold)


def make_loss_fn(model):
    """``loss(params, tokens int32 [B, L]) -> float32 scalar`` for a :func:`build_model` pair."""

    def loss_fn(params, tokens):
        return next_token_loss(model.apply(params, tokens), tokens)

    return loss_fn


def make_train_step(model, optimizer: optax.GradientTransformation):
    """Jit'ed ``step(params, opt_state, tokens) -> (params, opt_state, loss, grad_norm)``.

    ``grad_norm`` is the global L2 norm of the gradients before clipping. ``params`` and
    ``opt_state`` are donated (do not reuse the arguments after the call).
    """
    loss_fn = make_loss_fn(model)

    def step(params, opt_state, tokens):
        loss, grads = jax.value_and_grad(loss_fn)(params, tokens)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, grad_norm

    return jax.jit(step, donate_argnums=(0, 1))


def plot_loss(records: list[dict], path: str | os.PathLike, title: str = "") -> Path:
    """Write a PNG of loss against step (Agg backend), spikes in red. Returns the path."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records]
    losses = [r["loss"] for r in records]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(steps, losses, lw=1.0, label="train loss")
    spikes = [(r["step"], r["loss"]) for r in records if r.get("spike")]
    if spikes:
        ax.scatter(*zip(*spikes), color="red", s=12, zorder=3, label="spike (mean + 6 std, 128 steps)")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def _read_metrics(path: Path, before_step: int) -> list[dict]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            rec = json.loads(line)
            if rec["step"] < before_step:
                records.append(rec)
    return records


def train(shards_dir: str | os.PathLike, out_dir: str | os.PathLike, config_name: str = "tiny",
          steps: int = 200, batch_size: int = 8, lr: float = 3e-4, warmup: int = 2000, seed: int = 0,
          stage: str | None = None, substage: str | None = None, log_every: int = 10, *,
          total_steps: int | None = None, final_lr_ratio: float = 0.1, weight_decay: float = 0.1,
          clip_norm: float = 1.0, b1: float = 0.9, b2: float = 0.95, compute_dtype: str = "float32",
          init_seed: int | None = None, checkpoint_every: int = 0, resume: bool | str | os.PathLike | None = None,
          verify: bool | None = None, progress: bool = True, plot: bool = True, spike_window: int = 128,
          spike_std: float = 6.0) -> dict[str, Any]:
    """Pre-train a model on one sub-stage of a shards directory (SPEC §3 model, SPEC §4 optimizer).

    Args:
        shards_dir: ``xgen-shards`` directory (see :mod:`xgen_train.data`).
        out_dir: output folder (created).
        config_name: key of :data:`xgen_train.config.CONFIGS`.
        steps: total optimizer updates of the run, counting those already in a resumed checkpoint.
        batch_size: sequences per update; tokens per update = ``batch_size * seq_len``.
        lr, warmup: peak learning rate and linear warm-up updates (SPEC §4: 3e-4, 2,000).
        seed: data-order seed of ``batch_at(seed, step)``; also the init seed unless ``init_seed``.
        stage, substage: sub-stage to read (optional when unambiguous).
        log_every: refresh the progress bar (or print a line when there is no bar: ``progress=False`` or
            stderr is not a terminal) every N updates;
            ``metrics.jsonl`` gets every update regardless.
        total_steps: cosine length (default ``steps``); the rate ends at ``final_lr_ratio * lr``.
        weight_decay, clip_norm, b1, b2: SPEC §4 AdamW/clipping numbers.
        compute_dtype: ``"float32"`` (default) or ``"bfloat16"`` matmul operands (SPEC §3).
        checkpoint_every: also checkpoint every N updates (0: only at the end).
        resume: ``True`` = latest checkpoint under ``out_dir/checkpoints``; a path = that checkpoint;
            None/False = start fresh (refused when ``out_dir`` already holds checkpoints). Resuming continues bit-exactly (same batches, same state).
        verify: shard checks (:class:`xgen_train.data.ShardLoader`): None = sha256 of each shard when first read.
        progress: show a tqdm bar on stderr.
        plot: write ``loss.png``.
        spike_window, spike_std: loss-spike rule (SPEC §4 Choice: 128 steps, 6 std).

    ``metrics.jsonl`` fields per update: ``step`` (0-based update index), ``loss`` (nats/token),
    ``lr``, ``grad_norm`` (pre-clip), ``tokens_seen`` (``(step+1) * batch_size * seq_len``),
    ``seconds`` (wall time of this update incl. batch loading), ``elapsed_seconds`` (since the loop
    started, compile excluded), ``tokens_per_second`` (this update), ``epoch`` (fractional, after the
    update), ``spike`` (bool).

    Returns:
        Summary dict: ``first_loss``, ``last_loss``, ``first_loss_mean10``, ``last_loss_mean10``,
        ``start_step``, ``steps`` (updates run now), ``final_step``, ``tokens`` (this run),
        ``tokens_seen`` (total), ``seconds`` (loop wall time), ``compile_seconds``,
        ``tokens_per_second`` (this run, compile excluded), ``n_params``, ``spike_steps``,
        ``checkpoint``, ``metrics``, ``plot``, and the data selection.
    Raises:
        KeyError: unknown config. ShardFormatError: bad shards. ValueError: inconsistent arguments
        (vocab or sequence length vs model, warm-up > total steps, resume mismatch).
        FloatingPointError: non-finite loss (metrics are written up to that update).
    """
    t_setup = time.perf_counter()
    cfg = get_config(config_name)
    if steps <= 0:
        raise ValueError(f"steps must be > 0, got {steps}")
    if log_every <= 0:
        raise ValueError(f"log_every must be > 0, got {log_every}")
    loader = ShardLoader(shards_dir, batch_size, stage=stage, substage=substage, verify=verify)
    if loader.padded_vocab_size > cfg.vocab_size or loader.vocab_size > cfg.vocab_size:
        raise ValueError(f"shards use vocab {loader.padded_vocab_size} but model {config_name!r} has "
                         f"vocab_size {cfg.vocab_size}")
    if loader.seq_len > cfg.max_positions:
        raise ValueError(f"shard seq_len {loader.seq_len} exceeds {config_name!r} max_positions {cfg.max_positions}")
    if warmup > (total_steps or steps):
        raise ValueError(f"warmup {warmup} exceeds the schedule length {total_steps or steps} (total_steps or "
                         f"steps); pass a smaller warmup (--warmup) for a short run")
    opt_cfg = OptimizerConfig(peak_lr=lr, warmup_steps=warmup, total_steps=total_steps or steps,
                              final_lr_ratio=final_lr_ratio, b1=b1, b2=b2, weight_decay=weight_decay,
                              clip_norm=clip_norm)
    optimizer = make_optimizer(opt_cfg)
    model = build_model(cfg, compute_dtype)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_root = out / "checkpoints"
    metrics_path = out / "metrics.jsonl"
    run_info = {"config_name": config_name, "model_config": cfg.to_dict(), "optimizer": opt_cfg.to_dict(),
                "data": loader.describe(), "seed": seed, "init_seed": seed if init_seed is None else init_seed,
                "steps": steps, "compute_dtype": str(compute_dtype), "n_params": count_parameters(cfg)}

    # ---- state: fresh or resumed
    start_step = 0
    ckpt_dir = None
    if resume:
        ckpt_dir = latest_checkpoint(ckpt_root) if resume is True else Path(resume)
        if ckpt_dir is None:
            raise ValueError(f"resume=True but no checkpoint under {ckpt_root}")
    elif (earlier := latest_checkpoint(ckpt_root)) is not None:
        # a fresh run here would mix its checkpoints with an earlier run's (and --resume would pick theirs)
        raise ValueError(f"{out}: holds checkpoints of an earlier run (latest {earlier.name}); pass --resume to "
                         "continue it, or choose another output folder")
    if ckpt_dir is not None:
        template = jax.eval_shape(lambda: optimizer.init(init_params(cfg, 0)))
        ck = load_checkpoint(ckpt_dir, opt_state_template=template)
        if ck.model_config != cfg:
            raise ValueError(f"{ckpt_dir}: model config {ck.model_config} != {config_name!r} {cfg}")
        if ck.data_seed != seed:
            raise ValueError(f"{ckpt_dir}: data seed {ck.data_seed} != seed {seed}; resuming needs the same seed")
        if ck.step > steps:
            raise ValueError(f"{ckpt_dir}: checkpoint is at step {ck.step}, beyond steps={steps}")
        params = jax.tree.map(jnp.asarray, ck.params)
        opt_state = jax.tree.map(jnp.asarray, ck.opt_state)
        start_step = ck.step
        run_info["resumed_from"] = str(ckpt_dir)
    else:
        params = init_params(cfg, seed if init_seed is None else init_seed)
        opt_state = optimizer.init(params)
    (out / "run.json").write_text(json.dumps(run_info, indent=2) + "\n", encoding="utf-8")

    history = _read_metrics(metrics_path, start_step) if start_step else []
    detector = SpikeDetector(spike_window, spike_std)
    for rec in history[-spike_window:]:
        detector.history.append(rec["loss"])
    with open(metrics_path, "w", encoding="utf-8") as fh:  # drop lines past the resume point
        fh.writelines(json.dumps(r) + "\n" for r in history)

    # ---- compile once, ahead of the loop, so step timings are clean
    step_fn = make_train_step(model, optimizer)
    tok_spec = jax.ShapeDtypeStruct((batch_size, loader.seq_len), jnp.int32)
    t0 = time.perf_counter()
    compiled = step_fn.lower(params, opt_state, tok_spec).compile() if start_step < steps else None
    compile_seconds = time.perf_counter() - t0

    def save(step_done: int) -> Path:
        return save_checkpoint(ckpt_root / f"step_{step_done:08d}", params=params, opt_state=opt_state,
                               step=step_done, model_config=cfg, data_seed=seed, config_name=config_name,
                               extra={"optimizer": opt_cfg.to_dict(), "data": loader.describe(),
                                      "compute_dtype": str(compute_dtype)})

    from tqdm.auto import tqdm

    tokens_per_step = loader.tokens_per_batch
    records: list[dict] = []
    # A bar on a terminal; piped to a log, one line per `log_every` steps instead of carriage returns.
    bar_on = progress and sys.stderr.isatty()
    bar = tqdm(total=steps, initial=start_step, disable=not bar_on, desc=f"train {config_name}",
               unit="step", file=sys.stderr, dynamic_ncols=True)
    loop_start = time.perf_counter()
    try:
        with open(metrics_path, "a", encoding="utf-8") as mfh:
            for s in range(start_step, steps):
                t_step = time.perf_counter()
                batch = loader.batch_at(seed, s)
                params, opt_state, loss, gnorm = compiled(params, opt_state, batch["tokens"])
                loss, gnorm = float(loss), float(gnorm)
                dt = time.perf_counter() - t_step
                rec = {"step": s, "loss": loss, "lr": float(learning_rate(s, lr, warmup, opt_cfg.total_steps,
                                                                          final_lr_ratio)),
                       "grad_norm": gnorm, "tokens_seen": (s + 1) * tokens_per_step, "seconds": dt,
                       "elapsed_seconds": time.perf_counter() - loop_start,
                       "tokens_per_second": tokens_per_step / dt, "epoch": loader.epoch_of(s + 1),
                       "spike": detector.update(loss)}
                mfh.write(json.dumps(rec) + "\n")
                mfh.flush()
                records.append(rec)
                bar.update(1)
                if not math.isfinite(loss):
                    raise FloatingPointError(f"non-finite loss {loss} at step {s}; see {metrics_path}")
                if (s + 1 - start_step) % log_every == 0 or s + 1 == steps:
                    msg = dict(loss=f"{loss:.4f}", lr=f"{rec['lr']:.2e}", gnorm=f"{gnorm:.2f}",
                               tok_s=f"{rec['tokens_per_second']:.0f}")
                    if bar_on:
                        bar.set_postfix(msg, refresh=False)
                    else:
                        print(f"step {s}: " + " ".join(f"{k}={v}" for k, v in msg.items()), file=sys.stderr)
                if checkpoint_every and (s + 1) % checkpoint_every == 0 and s + 1 < steps:
                    save(s + 1)
    finally:
        bar.close()
    loop_seconds = time.perf_counter() - loop_start
    if start_step == steps and ckpt_dir is not None:
        last_ckpt = ckpt_dir  # resumed a finished run: nothing new to save
    else:
        last_ckpt = save(steps)

    all_records = history + records
    plot_path = None
    if plot and all_records:
        plot_path = plot_loss(all_records, out / "loss.png",
                              title=f"{config_name} on {loader.stage}/{loader.substage} (seq {loader.seq_len})")
    losses = [r["loss"] for r in records]
    n_run = len(records)
    summary = {
        "config_name": config_name, "n_params": count_parameters(cfg), "stage": loader.stage,
        "substage": loader.substage, "seq_len": loader.seq_len, "batch_size": batch_size,
        "start_step": start_step, "steps": n_run, "final_step": steps,
        "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
        "first_loss_mean10": float(np.mean(losses[:10])) if losses else None,
        "last_loss_mean10": float(np.mean(losses[-10:])) if losses else None,
        "tokens": n_run * tokens_per_step, "tokens_seen": steps * tokens_per_step,
        "seconds": loop_seconds, "compile_seconds": compile_seconds,
        "setup_seconds": loop_start - t_setup - compile_seconds,
        "tokens_per_second": n_run * tokens_per_step / loop_seconds if n_run else None,
        "spike_steps": [r["step"] for r in all_records if r.get("spike")],
        "checkpoint": str(last_ckpt), "metrics": str(metrics_path),
        "plot": str(plot_path) if plot_path else None,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
