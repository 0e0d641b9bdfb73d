"""Model configurations (SPEC §3) and the analytic parameter count.

This module does not import JAX, so it is cheap to import from the command line.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from xgen_data.errors import InputError


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a LLaMA-style decoder (SPEC §3).

    Attributes:
        vocab_size: embedding rows and LM-head outputs (SPEC §1/§3: 51,200 = 50,313 real tokens, padded).
        hidden: model width ``d_model``.
        intermediate: SwiGLU inner width (gate/up output, down input).
        n_layers: number of decoder blocks.
        n_heads: attention heads; key/value heads are the same number (no grouped KV).
        max_positions: longest sequence the model accepts (tokens).
        rope_theta: rotary base (SPEC §3: 10,000).
        rms_eps: RMSNorm epsilon (SPEC §3: 1e-6).
    """

    vocab_size: int = 51200
    hidden: int = 4096
    intermediate: int = 11008
    n_layers: int = 32
    n_heads: int = 32
    max_positions: int = 8192
    rope_theta: float = 10000.0
    rms_eps: float = 1e-6

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden", "intermediate", "n_layers", "n_heads", "max_positions"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise InputError(f"ModelConfig.{name} must be a positive int, got {value!r}")
        if self.hidden % self.n_heads:
            raise InputError(f"ModelConfig.hidden={self.hidden} is not divisible by n_heads={self.n_heads}")
        if self.head_dim % 2:
            raise InputError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        if self.rope_theta <= 0 or self.rms_eps <= 0:
            raise InputError("ModelConfig.rope_theta and rms_eps must be positive")

    @property
    def head_dim(self) -> int:
        """Width of one attention head: ``hidden // n_heads``."""
        return self.hidden // self.n_heads

    def to_dict(self) -> dict:
        """Plain-JSON form (used in checkpoints)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        """Inverse of :meth:`to_dict`. Raises ``ValueError`` on unknown keys."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InputError(f"unknown ModelConfig fields: {sorted(unknown)}")
        return cls(**data)


#: Named configurations. ``xgen-7b`` is SPEC §3; ``tiny``/``small`` are for CPU tests and demos.
CONFIGS: dict[str, ModelConfig] = {
    "xgen-7b": ModelConfig(vocab_size=51200, hidden=4096, intermediate=11008, n_layers=32, n_heads=32,
                           max_positions=8192),
    "tiny": ModelConfig(vocab_size=51200, hidden=128, intermediate=352, n_layers=2, n_heads=4,
                        max_positions=2048),
    "small": ModelConfig(vocab_size=51200, hidden=256, intermediate=688, n_layers=4, n_heads=8,
                         max_positions=2048),
}


def get_config(name: str) -> ModelConfig:
    """Return the named config from :data:`CONFIGS`; raises ``KeyError`` listing the known names."""
    try:
        return CONFIGS[name]
    except KeyError:
        raise InputError(f"unknown model config {name!r}; known: {', '.join(sorted(CONFIGS))}") from None


def count_parameters(cfg: ModelConfig) -> int:
    """Exact number of parameters of :func:`xgen_train.model.model.build_model` for ``cfg`` (SPEC §3).

    Embedding ``V*d`` + LM head ``V*d`` (untied) + per layer: q/k/v/o ``4*d*d``, gate/up/down
    ``3*d*i``, two RMSNorm gains ``2*d``; plus the final RMSNorm ``d``. No biases.
    ``count_parameters(CONFIGS["xgen-7b"]) == 6_895_702_016``.
    """
    d, i, v = cfg.hidden, cfg.intermediate, cfg.vocab_size
    per_layer = 4 * d * d + 3 * d * i + 2 * d
    return 2 * v * d + cfg.n_layers * per_layer + d
