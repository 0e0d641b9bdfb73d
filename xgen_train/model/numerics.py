"""How the trainer computes one update: precision, attention kernel, loss chunking, z-loss, remat, document
masking, gradient accumulation, spike skipping (SPEC §3 numerics, SPEC §4 loss spikes).

:class:`NumericsOptions` is the one object ``xgen_train.loop.trainer.train(numerics=...)`` takes; it does not
import JAX at module import time beyond :mod:`xgen_train.model.precision`. :meth:`NumericsOptions.resolved` fixes the
backend-dependent choices (``auto``) so the run config (``run.json``) records what actually ran, and a resume
with different numerics is refused.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from xgen_data.errors import InputError
from xgen_train.model.precision import PRECISIONS, PrecisionPolicy, resolve_precision

__all__ = ["ATTENTION_CHOICES", "NumericsOptions"]

ATTENTION_CHOICES = ("auto", "xla", "chunked", "dot_product")


@dataclass(frozen=True)
class NumericsOptions:
    """Numerics of the train step.

    Attributes:
        precision: ``auto`` (bfloat16 on GPU/TPU, float32 on CPU), ``bf16``/``bfloat16``, ``f32``/``float32``
            (:mod:`xgen_train.model.precision`).
        attention: ``auto`` (``dot_product`` = cuDNN flash on GPU, ``chunked`` on TPU, ``xla`` on CPU),
            ``xla`` (full scores), ``chunked`` (online softmax, O(T * block) memory), ``dot_product``
            (``jax.nn.dot_product_attention``) (:mod:`xgen_train.model.attention`).
        attention_block: query/key block of ``chunked`` attention (tokens).
        loss_chunk: positions per chunk of the fused LM-head + cross-entropy loop; ``0`` = full ``[B, L, V]``
            logits (:mod:`xgen_train.model.loss`).
        z_loss: weight of the PaLM z-loss ``mean(logsumexp^2)`` (0: off; PaLM used 1e-4).
        remat: rematerialise each decoder block in the backward pass (``hk.remat``): only block inputs are
            kept, the rest is recomputed (about one extra forward pass of compute).
        doc_mask: attention stays inside a document of a packed sequence and rotary positions restart per
            document (documents end with ``eos_id``). Off by default (XGen trains on plain packed sequences).
        eos_id: EOS token id for ``doc_mask`` (the trainer takes it from the shards manifest).
        accum_steps: microbatches per update (gradient accumulation); the batch's sequences must divide.
        skip_spikes: do not apply an update flagged by the SPEC §4 loss-spike rule.
    """

    precision: str = "auto"
    attention: str = "auto"
    attention_block: int = 512
    loss_chunk: int = 512
    z_loss: float = 0.0
    remat: bool = False
    doc_mask: bool = False
    eos_id: int | None = None
    accum_steps: int = 1
    skip_spikes: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.attention not in ATTENTION_CHOICES:
            raise InputError(f"attention must be one of {', '.join(ATTENTION_CHOICES)}, got {self.attention!r}")
        if self.attention_block <= 0 or self.loss_chunk < 0 or self.accum_steps <= 0:
            raise InputError("need attention_block > 0, loss_chunk >= 0, accum_steps > 0")
        if not math.isfinite(self.z_loss) or self.z_loss < 0:  # NaN passes every comparison
            raise InputError(f"z_loss must be a finite number >= 0, got {self.z_loss}")

    def resolved(self, backend: str | None = None) -> "NumericsOptions":
        """Copy with ``precision`` and ``attention`` made concrete for ``backend`` (default: JAX's)."""
        import jax

        backend = backend or jax.default_backend()
        attn = self.attention
        if attn == "auto":
            attn = {"gpu": "dot_product", "cuda": "dot_product", "rocm": "dot_product", "tpu": "chunked"}.get(
                backend, "xla")
        return dataclasses.replace(self, precision=resolve_precision(self.precision, backend).name, attention=attn)

    @property
    def policy(self) -> PrecisionPolicy:
        """The precision policy (``auto`` resolved for the current backend)."""
        return resolve_precision(self.precision)

    def to_dict(self) -> dict:
        """Plain-JSON form (for ``run.json``)."""
        return dataclasses.asdict(self)
