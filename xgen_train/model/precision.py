"""Precision policy of the trainer (SPEC §3: "parameters and all computation in float32 except matrix
multiplications in bfloat16").

A :class:`PrecisionPolicy` fixes the operand dtype of every matrix multiplication; everything else is float32
by construction in :mod:`xgen_train.model.model` and :mod:`xgen_train.model.loss` (parameters, optimizer state, residual
stream, RMSNorm, rotary, softmax, loss):

* ``bfloat16``: operands rounded to bfloat16, products accumulated and returned in float32
  (``preferred_element_type=float32``), in the forward **and** the backward pass. :func:`matmul` is a
  ``jax.custom_vjp`` whose backward casts the float32 cotangent to bfloat16 and multiplies it with the
  bfloat16 residuals, again accumulating in float32. (Plain autodiff of a mixed-precision ``einsum`` gives
  float32 x float32 backward products: the cotangent stays float32.) Residuals are stored in bfloat16, which
  also halves their memory.
* ``float32``: float32 operands with ``Precision.HIGHEST`` set on every product, so the result stays float32
  on TPU (whose default is bfloat16 passes) and on NVIDIA GPUs (whose default may be TF32).

:func:`resolve_precision` turns a request (``"auto"``, ``"bf16"``/``"bfloat16"``, ``"f32"``/``"float32"``) into
a policy: ``auto`` is bfloat16 on accelerators (GPU, TPU) and float32 on CPU (CPUs have no fast bfloat16
matmul and the float32 path is the exact reference). The trainer records the resolved name in ``run.json``.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp

from xgen_data.errors import InputError

__all__ = ["PRECISIONS", "PrecisionPolicy", "as_policy", "matmul", "resolve_precision"]

#: Accepted requests -> resolved name (``auto`` depends on the backend).
PRECISIONS = {"auto": None, "bf16": "bfloat16", "bfloat16": "bfloat16", "f32": "float32", "float32": "float32"}


@dataclass(frozen=True)
class PrecisionPolicy:
    """Resolved precision: ``name`` is ``"bfloat16"`` or ``"float32"`` (the matmul operand dtype)."""

    name: str = "float32"

    def __post_init__(self) -> None:
        if self.name not in ("bfloat16", "float32"):
            raise InputError(f"precision must be bfloat16 or float32, got {self.name!r}")

    @property
    def compute_dtype(self) -> jnp.dtype:
        """Operand dtype of matrix multiplications."""
        return jnp.dtype(self.name)

    @property
    def precision(self) -> jax.lax.Precision:
        """``HIGHEST`` for float32 (no silent bf16/TF32 passes), ``DEFAULT`` for bfloat16 operands."""
        return jax.lax.Precision.HIGHEST if self.name == "float32" else jax.lax.Precision.DEFAULT


def resolve_precision(request: str = "auto", backend: str | None = None) -> PrecisionPolicy:
    """Policy for ``request`` (a key of :data:`PRECISIONS`) on ``backend`` (default ``jax.default_backend()``).

    ``auto``: bfloat16 on ``gpu``/``cuda``/``rocm``/``tpu``, float32 on ``cpu``. Raises ``ValueError`` for an
    unknown request.
    """
    if request not in PRECISIONS:
        raise InputError(f"unknown precision {request!r}; use one of {', '.join(PRECISIONS)}")
    name = PRECISIONS[request]
    if name is None:
        backend = backend or jax.default_backend()
        name = "float32" if backend == "cpu" else "bfloat16"
    return PrecisionPolicy(name)


def as_policy(x) -> PrecisionPolicy:
    """A policy from a policy, a dtype name (``"float32"``, ``"bfloat16"``, ``"bf16"``, ``"f32"``) or a dtype.

    Raises ``ValueError`` (naming the value) for anything else, e.g. ``float16``.
    """
    if isinstance(x, PrecisionPolicy):
        return x
    if isinstance(x, str) and x in PRECISIONS and PRECISIONS[x] is not None:
        return PrecisionPolicy(PRECISIONS[x])
    try:
        dt = jnp.dtype(x)
    except TypeError:
        raise InputError(f"unknown compute_dtype {x!r}; use float32 or bfloat16") from None
    if dt not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
        raise InputError(f"compute_dtype must be float32 or bfloat16, got {dt}")
    return PrecisionPolicy(dt.name)


def _parse(spec: str) -> tuple[str, str, str]:
    ins, out = spec.replace(" ", "").split("->")
    a, b = ins.split(",")
    if "." in spec or len(set(a)) != len(a) or len(set(b)) != len(b):
        raise ValueError(f"matmul spec {spec!r}: use explicit, non-repeated index letters (no '...')")
    for s in (a, b):
        if any(c not in out and c not in (b if s is a else a) for c in s):
            raise ValueError(f"matmul spec {spec!r}: an index summed over one operand only")
    return a, b, out


def _dot(spec: str, a, b, name: str):
    pol = PrecisionPolicy(name)
    dt = pol.compute_dtype
    return jnp.einsum(spec, a.astype(dt), b.astype(dt), preferred_element_type=jnp.float32,
                      precision=pol.precision)


@partial(jax.custom_vjp, nondiff_argnums=(0, 3))
def _matmul(spec: str, a, b, name: str):
    return _dot(spec, a, b, name)


def _matmul_fwd(spec, a, b, name):
    dt = PrecisionPolicy(name).compute_dtype
    a_c, b_c = a.astype(dt), b.astype(dt)
    # residuals: operands in the compute dtype, and zero-size markers of the original dtypes
    return _dot(spec, a_c, b_c, name), (a_c, b_c, jnp.zeros((0,), a.dtype), jnp.zeros((0,), b.dtype))


def _matmul_bwd(spec, name, res, g):
    a_c, b_c, a_dt, b_dt = res
    sa, sb, so = _parse(spec)
    da = _dot(f"{so},{sb}->{sa}", g, b_c, name).astype(a_dt.dtype)
    db = _dot(f"{so},{sa}->{sb}", g, a_c, name).astype(b_dt.dtype)
    return da, db


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def matmul(spec: str, a: jax.Array, b: jax.Array, policy) -> jax.Array:
    """``einsum(spec, a, b)`` under ``policy`` (a :class:`PrecisionPolicy` or dtype name); float32 result.

    Args:
        spec: two-operand einsum with explicit letters, e.g. ``"ni,oi->no"``, ``"bhqd,bhkd->bhqk"``; every
            contracted letter appears in both operands.
        a, b: float arrays (any float dtype; cast to the policy's operand dtype).
        policy: see the module doc.
    Returns:
        float32 array of the ``spec`` output shape. Gradients w.r.t. ``a`` and ``b`` come back in their
        input dtypes and are computed by the same policy (bf16 operands, float32 accumulation).
    Raises:
        ValueError: an unsupported ``spec`` (ellipsis, repeated letters, an index summed in one operand).
    """
    _parse(spec)
    return _matmul(spec, a, b, as_policy(policy).name)


def linear(x: jax.Array, w: jax.Array, policy) -> jax.Array:
    """``x @ w.T`` for PyTorch-layout ``w [out, in]`` and ``x [..., in]`` under ``policy``; float32 ``[..., out]``."""
    lead = x.shape[:-1]
    y = matmul("ni,oi->no", x.reshape(-1, x.shape[-1]), w, policy)
    return y.reshape(*lead, w.shape[0])
