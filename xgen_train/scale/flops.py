"""Training FLOPs per token and model FLOP utilisation (MFU), the PaLM way.

Convention (PaLM, Chowdhery et al. 2022, Appendix B "Compute usage and model FLOPs utilization"; the same
6N rule as Kaplan et al. 2020 §2.1 and Chinchilla, Hoffmann et al. 2022, Appendix F)::

    flops_per_token = 6 * N  +  12 * n_layers * hidden * seq_len

* ``N`` = the parameters that take part in matrix multiplications: per layer q/k/v/o ``4 d^2`` and
  gate/up/down ``3 d i``, plus the LM head ``V d``. The input embedding (a gather, no multiply-adds) and
  the RMSNorm gains (element-wise) are left out. ``6 = 2`` (multiply + add) ``x 3`` (forward, and a
  backward pass that costs twice the forward: gradients w.r.t. activations and w.r.t. weights).
* Attention scores and their weighted sum (``QK^T`` and ``PV``): ``2 * 2 * seq_len * d`` multiply-adds per
  token and layer in the forward pass, times 3 for forward + backward = ``12 * n_layers * d * seq_len``
  (PaLM's ``12 L H Q T`` with ``H * Q = d``). As in PaLM the causal mask is not discounted (no halving), and
  rematerialisation is not counted (MFU, unlike hardware FLOP utilisation, counts the model's FLOPs only).

``MFU = tokens_per_second * flops_per_token / (n_chips * peak_flops_per_chip)``, with the chip's dense
bfloat16 peak (:data:`PEAK_FLOPS`, found by ``jax.devices()[0].device_kind``, or given explicitly). On a
CPU there is no table entry: MFU is ``None`` unless a peak is given (``xgen train --peak-flops``).
"""
from __future__ import annotations

from xgen_data.errors import InputError
from xgen_train.model.config import ModelConfig

__all__ = ["PEAK_FLOPS", "flops_per_token", "matmul_params", "mfu", "peak_flops"]

#: Dense (no structured sparsity) bfloat16 peak FLOP/s per chip, by a substring of ``device_kind``
#: (case-insensitive; the first match wins, so more specific names come first). Sources: Google Cloud TPU
#: system-architecture pages (cloud.google.com/tpu/docs/v4, v5e, v5p, v6e: "peak compute per chip, bf16"),
#: NVIDIA A100 datasheet (312 TFLOPS BF16 dense), H100 datasheet (SXM 989, PCIe 756 TFLOPS BF16 dense; the
#: "1,979" figures are with sparsity), H200 datasheet (989 TFLOPS BF16 dense, same compute as H100 SXM).
#: Any other chip: pass the peak explicitly (``xgen train --peak-flops``).
PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    ("TPU v6 lite", 918e12),  # Trillium / v6e
    ("TPU v6e", 918e12),
    ("TPU v5 lite", 197e12),  # v5e ("TPU v5 lite" is its device_kind)
    ("TPU v5e", 197e12),
    ("TPU v5p", 459e12),
    ("TPU v5", 459e12),  # v5p reports "TPU v5"
    ("TPU v4", 275e12),
    ("TPU v3", 123e12),
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM / HBM3
    ("A100", 312e12),
)


def matmul_params(cfg: ModelConfig) -> int:
    """``N`` of the 6N rule: ``n_layers * (4 d^2 + 3 d i) + V d`` (blocks + LM head; no input embedding, no norms)."""
    d, i = cfg.hidden, cfg.intermediate
    return cfg.n_layers * (4 * d * d + 3 * d * i) + cfg.vocab_size * d


def flops_per_token(cfg: ModelConfig, seq_len: int) -> int:
    """Training FLOPs per token (forward + backward): ``6 N + 12 n_layers d seq_len`` (module doc; PaLM App. B).

    Raises ``ValueError`` for ``seq_len < 1``.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    return 6 * matmul_params(cfg) + 12 * cfg.n_layers * cfg.hidden * int(seq_len)


def peak_flops(device_kind: str | None = None, override: float | None = None) -> float | None:
    """Peak dense bf16 FLOP/s of one chip: ``override`` if given, else :data:`PEAK_FLOPS` by ``device_kind``
    (default ``jax.devices()[0].device_kind``); ``None`` when unknown (e.g. ``"cpu"``).

    Raises ``ValueError`` when ``override`` is not positive.
    """
    if override is not None:
        if not override > 0:
            raise InputError(f"peak FLOP/s must be > 0, got {override}")
        return float(override)
    if device_kind is None:
        import jax

        device_kind = jax.devices()[0].device_kind
    kind = device_kind.lower()
    for key, value in PEAK_FLOPS:
        if key.lower() in kind:
            return value
    return None


def mfu(tokens_per_second: float, cfg: ModelConfig, seq_len: int, n_chips: int, peak: float | None) -> float | None:
    """Model FLOP utilisation in ``[0, 1]``-ish: achieved model FLOP/s over ``n_chips * peak`` (None without a peak)."""
    if peak is None or n_chips < 1:
        return None
    return tokens_per_second * flops_per_token(cfg, seq_len) / (n_chips * peak)
