"""One optimizer update as a pure function: the seam between the model/loss numerics and the loop.

``make_train_step`` returns an *un-jitted* function

    step(params, opt_state, monitor, tokens) -> (params, opt_state, monitor, metrics)

so the loop decides how to compile it (plain ``jax.jit``, or with in/out shardings over a device mesh,
donating arguments 0-2). ``metrics`` is a dict of device scalars that the loop may fetch late (no host sync
per step is needed): ``loss`` (float32, nats/token), ``grad_norm`` (float32, global L2 norm before
clipping), ``spike`` (int32 0/1, SPEC §4 loss-spike rule), ``nonfinite`` (int32 0/1: loss or gradients not
finite), ``skipped`` (int32 0/1: the update was not applied; params and optimizer state are returned
unchanged); with a loss function that returns ``(loss, aux)`` (:func:`xgen_train.model.loss.make_loss_fn`) also
``objective`` (the differentiated loss, ``loss + z_loss * z``) and ``z_loss`` (mean ``logsumexp^2``), and
``loss`` is then ``aux["ce"]``, the cross-entropy.

Gradient accumulation (``StepOptions.accum_steps = A``): the ``[B, L]`` batch is viewed as ``[B//A, A, L]``
and a ``lax.scan`` runs over axis 1, so microbatch ``i`` holds rows ``i, i+A, i+2A, ...``: a batch sharded
along B on a data mesh axis stays sharded in every microbatch. The step's gradient (and loss) is the mean over
microbatches, which equals the one-shot mean over the batch (every row has ``L - 1`` terms).

``monitor`` is the device-side loss-spike state (SPEC §4 Choice): a ring buffer of the last ``window``
finite losses and a count, see :func:`init_monitor`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import optax

from xgen_data.errors import InputError

__all__ = ["StepOptions", "accumulated_value_and_grad", "init_monitor", "make_train_step", "monitor_from_history",
           "spike_update", "token_sum_value_and_grad"]


@dataclass(frozen=True)
class StepOptions:
    """What one update does beyond loss -> gradients -> optimizer.

    Attributes:
        spike_window: losses the spike rule looks back over (SPEC §4: 128 updates).
        spike_std: a loss above ``mean + spike_std * std`` of the window is a spike (SPEC §4: 6).
        spike_min_history: no spike is flagged before this many finite losses.
        skip_spikes: do not apply the update of a step flagged as a spike.
        accum_steps: microbatches per update (gradient accumulation, see the module doc); ``B`` must be a
            multiple.
    """

    spike_window: int = 128
    spike_std: float = 6.0
    spike_min_history: int = 16
    skip_spikes: bool = False
    accum_steps: int = 1

    def __post_init__(self) -> None:
        if self.accum_steps < 1:
            raise InputError(f"accum_steps must be >= 1, got {self.accum_steps}")
        if self.spike_window < 2 or self.spike_min_history < 2 or self.spike_min_history > self.spike_window:
            raise InputError("need 2 <= spike_min_history <= spike_window")

    def to_dict(self) -> dict:
        """Plain-dict form (for ``run.json``)."""
        return asdict(self)


def init_monitor(opts: StepOptions) -> dict[str, jax.Array]:
    """Empty spike monitor: ``losses`` float32 ``[window]`` (ring buffer), ``count`` int32 (losses seen)."""
    return {"losses": jnp.zeros((opts.spike_window,), jnp.float32), "count": jnp.zeros((), jnp.int32)}


def spike_update(monitor: dict[str, jax.Array], loss: jax.Array, opts: StepOptions):
    """Spike flag of ``loss`` against the preceding window, and the monitor with ``loss`` added.

    Same rule as SPEC §4 (Choice): ``loss > mean + n_std * std`` (population std) of the up to ``window``
    previous finite losses, once ``min_history`` of them exist. A non-finite loss is never a spike and is
    not added. Returns ``(spike bool scalar, new monitor)``; traceable (use inside jit).
    """
    window = opts.spike_window
    n = jnp.minimum(monitor["count"], window)
    valid = jnp.arange(window) < n
    hist = monitor["losses"]
    denom = jnp.maximum(n, 1).astype(jnp.float32)
    mean = jnp.sum(jnp.where(valid, hist, 0.0)) / denom
    var = jnp.sum(jnp.where(valid, (hist - mean) ** 2, 0.0)) / denom
    finite = jnp.isfinite(loss)
    spike = finite & (n >= opts.spike_min_history) & (loss > mean + opts.spike_std * jnp.sqrt(var))
    slot = monitor["count"] % window
    new = {"losses": jnp.where(finite, hist.at[slot].set(loss.astype(jnp.float32)), hist),
           "count": monitor["count"] + finite.astype(jnp.int32)}
    return spike, new


def monitor_from_history(losses: Iterable[float], opts: StepOptions) -> dict[str, jax.Array]:
    """Monitor state after seeing ``losses`` in order (a resume replays the run's recorded losses)."""
    mon = init_monitor(opts)
    upd = jax.jit(lambda m, x: spike_update(m, x, opts)[1])
    for x in losses:
        mon = upd(mon, jnp.float32(x))
    return mon


def _tree_select(pred: jax.Array, on_true, on_false):
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def _with_aux(loss_fn: Callable) -> Callable:
    """``loss_fn`` as ``(params, tokens) -> (loss, aux dict)`` whatever it returns (structure is static)."""

    def f(params, tokens):
        out = loss_fn(params, tokens)
        return out if isinstance(out, tuple) else (out, {})

    return f


def accumulated_value_and_grad(loss_fn: Callable, accum_steps: int) -> Callable:
    """``(params, tokens [B, L]) -> ((loss, aux), grads)``: means over ``accum_steps`` microbatches.

    ``loss_fn(params, tokens) -> (loss, aux)``. Microbatch ``i`` = rows ``i::accum_steps`` (the module doc);
    a ``lax.scan`` keeps one microbatch's activations alive at a time; gradients accumulate in float32.
    Raises ``ValueError`` (at trace time) when ``B`` is not a multiple of ``accum_steps``.
    """
    vg = jax.value_and_grad(loss_fn, has_aux=True)
    if accum_steps == 1:
        return vg

    def f(params, tokens):
        b, length = tokens.shape
        if b % accum_steps:
            raise InputError(f"batch of {b} sequences is not a multiple of accum_steps={accum_steps}")
        micro = tokens.reshape(b // accum_steps, accum_steps, length).swapaxes(0, 1)  # [A, B//A, L]
        (_, aux0), _ = jax.eval_shape(vg, params, micro[0])
        zeros = (jnp.zeros((), jnp.float32), jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), aux0),
                 jax.tree.map(jnp.zeros_like, params))

        def body(acc, mb):
            (loss, aux), grads = vg(params, mb)
            return jax.tree.map(jnp.add, acc, (loss, aux, grads)), None

        (loss, aux, grads), _ = jax.lax.scan(body, zeros, micro)
        scale = 1.0 / accum_steps
        return (loss * scale, jax.tree.map(lambda a: a * scale, aux)), jax.tree.map(lambda g: g * scale, grads)

    return f


def _micro_batches(batch, accum_steps: int):
    """A batch pytree of ``[B, ...]`` arrays as ``[A, B//A, ...]``: microbatch ``i`` = rows ``i::A`` (module doc)."""
    def split(a):
        if a.shape[0] % accum_steps:
            raise InputError(f"batch of {a.shape[0]} sequences is not a multiple of accum_steps={accum_steps}")
        return a.reshape(a.shape[0] // accum_steps, accum_steps, *a.shape[1:]).swapaxes(0, 1)
    return jax.tree.map(split, batch)


def token_sum_value_and_grad(loss_sum_fn: Callable, count_fn: Callable, accum_steps: int) -> Callable:
    """``(params, batch) -> ((loss, aux), grads)`` for a loss given as a *sum* over scored tokens.

    ``loss_sum_fn(params, batch) -> (objective_sum, aux sums)``; ``count_fn(batch)`` -> the number of scored
    tokens of the whole batch (float32). Sums (of the objective, the aux values and the gradients) are
    accumulated over ``accum_steps`` microbatches (rows ``i::accum_steps``) and divided once by the whole
    batch's count (at least 1), so the result is the per-token mean over the batch whatever the
    micro-batching or the number of scored tokens per row (SPEC §5 SFT loss; transformers #24725).
    """
    vg = jax.value_and_grad(loss_sum_fn, has_aux=True)

    def f(params, batch):
        n = jnp.maximum(count_fn(batch), 1.0)
        if accum_steps == 1:
            (total, aux), grads = vg(params, batch)
        else:
            micro = _micro_batches(batch, accum_steps)
            first = jax.tree.map(lambda a: a[0], micro)
            (_, aux0), _ = jax.eval_shape(vg, params, first)
            zeros = (jnp.zeros((), jnp.float32), jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), aux0),
                     jax.tree.map(jnp.zeros_like, params))

            def body(acc, mb):
                (loss, aux), g = vg(params, mb)
                return jax.tree.map(jnp.add, acc, (loss, aux, g)), None

            (total, aux, grads), _ = jax.lax.scan(body, zeros, micro)
        return (total / n, jax.tree.map(lambda a: a / n, aux)), jax.tree.map(lambda g: g / n, grads)

    return f


def make_train_step(loss_fn: Callable, optimizer: optax.GradientTransformation,
                    opts: StepOptions = StepOptions(), *, value_and_grad: Callable | None = None) -> Callable:
    """Un-jitted update ``step(params, opt_state, monitor, tokens int32 [B, L])`` (see the module doc).

    Args:
        loss_fn: ``loss_fn(params, tokens) -> float32 scalar`` or ``-> (scalar, aux)`` with aux keys ``ce`` and
            ``z`` (:func:`xgen_train.model.loss.make_loss_fn`).
        optimizer: the optax transformation (clipping + AdamW, :func:`xgen_train.loop.optimizer.make_optimizer`).
        opts: spike rule and skip policy.
        value_and_grad: ``(params, batch) -> ((objective, aux), grads)`` replacing the mean-loss accumulation
            of ``loss_fn`` (e.g. :func:`token_sum_value_and_grad` for the SFT loss; ``batch`` is then a pytree).

    Non-finite loss or gradients never reach the parameters: such an update is skipped (``skipped=1``,
    ``nonfinite=1``); so is a flagged spike when ``opts.skip_spikes``.
    """

    if value_and_grad is None:
        value_and_grad = accumulated_value_and_grad(_with_aux(loss_fn), opts.accum_steps)

    def step(params, opt_state, monitor, tokens):
        (objective, aux), grads = value_and_grad(params, tokens)
        loss = aux.get("ce", objective)
        grad_norm = optax.tree.norm(grads)
        nonfinite = ~(jnp.isfinite(objective) & jnp.isfinite(grad_norm))
        spike, monitor = spike_update(monitor, loss, opts)
        skip = nonfinite | (spike & opts.skip_spikes)
        updates, new_opt_state = optimizer.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        params = _tree_select(skip, params, new_params)
        opt_state = _tree_select(skip, opt_state, new_opt_state)
        metrics = {"loss": loss, "grad_norm": grad_norm, "spike": spike.astype(jnp.int32),
                   "nonfinite": nonfinite.astype(jnp.int32), "skipped": skip.astype(jnp.int32)}
        if "ce" in aux:
            metrics["objective"] = objective
        if "z" in aux:
            metrics["z_loss"] = aux["z"]
        return params, opt_state, monitor, metrics

    return step
