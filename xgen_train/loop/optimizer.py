"""AdamW with global-norm clipping and a warm-up + cosine learning-rate schedule (SPEC §4).

SPEC §4 (LLaMA-7B's hyper-parameters): AdamW beta1 0.9, beta2 0.95, weight decay 0.1, gradient
clipping at global norm 1.0, 2,000 linear warm-up steps, cosine decay to 10% of the peak learning
rate 3e-4. Every number is an argument so tiny CPU runs can shorten the warm-up and raise the peak.

Weight decay (Choice, as in LLaMA/GPT-style training and Hugging Face's Trainer): decoupled decay
(``param -= lr * weight_decay * param``, PyTorch ``AdamW`` semantics) on every matrix (``ndim >= 2``:
attention and MLP projections, the input embedding and the LM head); no decay on the RMSNorm gains
(``ndim == 1``). The model has no biases.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import optax

from xgen_data.errors import InputError

__all__ = ["OptimizerConfig", "decay_mask", "learning_rate", "make_optimizer", "make_schedule"]


@dataclass(frozen=True)
class OptimizerConfig:
    """Optimizer hyper-parameters; the defaults are SPEC §4's.

    Attributes:
        peak_lr: learning rate reached at the end of warm-up (SPEC: 3e-4).
        warmup_steps: linear warm-up length in optimizer steps (SPEC: 2,000).
        total_steps: step at which the cosine reaches ``final_lr_ratio * peak_lr``; it stays there after.
        final_lr_ratio: end of the cosine as a fraction of the peak (SPEC: 0.1).
        b1, b2, eps: Adam moments (SPEC: 0.9, 0.95; eps 1e-8 as in PyTorch/LLaMA).
        weight_decay: decoupled decay on matrices (SPEC: 0.1).
        clip_norm: global gradient-norm clip (SPEC: 1.0); ``0`` disables clipping.
    """

    peak_lr: float = 3e-4
    warmup_steps: int = 2000
    total_steps: int = 100_000
    final_lr_ratio: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    clip_norm: float = 1.0

    def __post_init__(self) -> None:
        for name in ("peak_lr", "final_lr_ratio", "b1", "b2", "eps", "weight_decay", "clip_norm"):
            if not math.isfinite(getattr(self, name)):  # NaN passes every comparison below
                raise InputError(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.peak_lr <= 0:
            raise InputError(f"peak_lr must be > 0, got {self.peak_lr}")
        if self.warmup_steps < 0 or self.total_steps <= 0:
            raise InputError("warmup_steps must be >= 0 and total_steps > 0")
        if self.warmup_steps > self.total_steps:
            raise InputError(f"warmup_steps={self.warmup_steps} exceeds total_steps={self.total_steps}")
        if not 0.0 <= self.final_lr_ratio <= 1.0:
            raise InputError(f"final_lr_ratio must be in [0, 1], got {self.final_lr_ratio}")
        if self.weight_decay < 0 or self.clip_norm < 0:
            raise InputError("weight_decay and clip_norm must be >= 0")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def learning_rate(step, peak_lr: float = 3e-4, warmup_steps: int = 2000, total_steps: int = 100_000,
                  final_lr_ratio: float = 0.1):
    """Learning rate used by the update numbered ``step`` (0-based; SPEC §4).

    * ``step <= warmup_steps``: linear warm-up ``peak_lr * step / warmup_steps`` (0 at step 0,
      the peak at ``warmup_steps``), as ``optax.warmup_cosine_decay_schedule(init_value=0)``.
    * ``warmup_steps <= step <= total_steps``: cosine from ``peak_lr`` down to
      ``final_lr_ratio * peak_lr``: ``final + (peak - final) * (1 + cos(pi * progress)) / 2``.
    * ``step >= total_steps``: ``final_lr_ratio * peak_lr``.

    Works on Python numbers (returns ``float``) and on JAX arrays (traceable, returns float32).
    Units: the same as ``peak_lr`` (per update).
    """
    final = peak_lr * final_lr_ratio
    decay_len = max(total_steps - warmup_steps, 1)
    if isinstance(step, (int, float)):
        if warmup_steps > 0 and step < warmup_steps:
            return peak_lr * step / warmup_steps
        progress = min(max(step - warmup_steps, 0) / decay_len, 1.0)
        return final + (peak_lr - final) * 0.5 * (1.0 + math.cos(math.pi * progress))
    step = jnp.asarray(step, jnp.float32)
    warm = peak_lr * step / max(warmup_steps, 1)
    progress = jnp.clip((step - warmup_steps) / decay_len, 0.0, 1.0)
    cosine = final + (peak_lr - final) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    return jnp.where(step < warmup_steps, warm, cosine)


def make_schedule(cfg: OptimizerConfig) -> optax.Schedule:
    """:func:`learning_rate` bound to ``cfg`` as an optax schedule ``count -> lr``."""
    return lambda count: learning_rate(count, cfg.peak_lr, cfg.warmup_steps, cfg.total_steps,
                                       cfg.final_lr_ratio)


def decay_mask(params):
    """Pytree of bools like ``params``: True (decay) for matrices (``ndim >= 2``), False for norms."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
    """SPEC §4 optimizer: clip by global norm, then AdamW with :func:`make_schedule` and :func:`decay_mask`.

    The update for count ``s`` uses ``learning_rate(s)``. The pre-clip global gradient norm is not
    part of the state; the trainer computes it with ``optax.tree.norm`` for logging.
    """
    adamw = optax.adamw(make_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                        weight_decay=cfg.weight_decay, mask=decay_mask)
    if cfg.clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), adamw)
    return optax.chain(optax.identity(), adamw)  # same state structure with or without clipping
