"""Causal multi-head attention kernels (SPEC §3 model), with optional document masking.

All take rotated queries/keys and values ``q, k, v`` float ``[B, H, T, hd]`` and return float32
``[B, H, T, hd]`` = ``softmax(q k^T / sqrt(hd) + mask) v`` where the mask allows key ``s`` for query ``t`` iff
``s <= t`` and (with ``segment_ids int32 [B, T]``) both lie in the same document. Softmax is float32; the
two products follow the precision policy (:mod:`xgen_train.model.precision`).

* ``"xla"`` (:func:`plain_attention`): materialises float32 ``[B, H, T, T]`` scores; fastest for short
  sequences on CPU, the reference.
* ``"chunked"`` (:func:`chunked_attention`): blockwise attention with an online softmax (Milakov & Gimelshein
  2018; Rabe & Staats 2021, "Self-attention does not need O(n^2) memory"; FlashAttention's recurrence):
  a scan over query blocks, inside it a scan over key blocks carrying the running max, normaliser and
  output; both bodies are rematerialised (``jax.checkpoint``), so memory is ``O(T * block)`` in the forward
  and the backward. Key blocks entirely above the causal diagonal are skipped (``lax.cond``).
* ``"dot_product"`` (:func:`dot_product_attention`): ``jax.nn.dot_product_attention``: on GPU JAX picks the
  cuDNN (flash) implementation where it applies (bfloat16 operands), XLA's elsewhere. Its products take the policy's operand dtype but are
  not routed through :func:`xgen_train.model.precision.matmul` (the library owns the kernel).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from xgen_data.errors import InputError
from xgen_train.model.precision import as_policy, matmul

__all__ = ["ATTENTION_IMPLS", "attention", "chunked_attention", "dot_product_attention", "plain_attention",
           "segments_from_eos"]

ATTENTION_IMPLS = ("xla", "chunked", "dot_product")
_NEG = -1e30


def segments_from_eos(tokens: jax.Array, eos_id: int) -> tuple[jax.Array, jax.Array]:
    """Document ids and per-document positions of a packed batch.

    A document ends with (and includes) its EOS token, so the token after an EOS starts a new document.

    Args:
        tokens: int ``[B, T]``.
        eos_id: the EOS token id (the shards manifest's ``eos_id``).
    Returns:
        ``(segment_ids, positions)``, int32 ``[B, T]``: ``segment_ids`` counts the EOS tokens strictly before
        each position; ``positions`` restarts at 0 at each document start (rotary positions).
    """
    is_eos = (tokens == eos_id).astype(jnp.int32)
    seg = jnp.cumsum(is_eos, axis=1) - is_eos
    t = jnp.arange(tokens.shape[1], dtype=jnp.int32)[None, :]
    start = jnp.concatenate([jnp.ones_like(is_eos[:, :1]), is_eos[:, :-1]], axis=1).astype(bool)
    first = jax.lax.cummax(jnp.where(start, t, 0), axis=1)
    return seg.astype(jnp.int32), (t - first).astype(jnp.int32)


def _mask(q_idx, k_idx, q_seg, k_seg):
    """bool ``[B or 1, 1, tq, tk]``: causal and (if given) same segment."""
    m = (k_idx[None, :] <= q_idx[:, None])[None, None]
    if q_seg is not None:
        m = m & (q_seg[:, None, :, None] == k_seg[:, None, None, :])
    return m


def plain_attention(q, k, v, policy="float32", segment_ids=None, q_start=0) -> jax.Array:
    """Reference attention with full ``[B, H, Tq, Tk]`` float32 scores (see the module doc).

    ``q_start`` (int scalar, may be traced) is the position of the first query: query ``t`` sits at
    ``q_start + t`` and sees keys ``0 .. q_start + t`` of ``k, v [B, H, Tk, hd]`` (a key/value cache,
    :mod:`xgen_train.evaluate.generate`; its slots past the last query are masked). With ``q_start = 0`` and
    ``Tq == Tk`` it is the causal self-attention of the module doc. ``segment_ids`` needs ``Tq == Tk``.
    """
    hd = q.shape[3]
    scores = matmul("bhqd,bhkd->bhqk", q, k, policy) * (1.0 / math.sqrt(hd))
    mask = _mask(q_start + jnp.arange(q.shape[2]), jnp.arange(k.shape[2]), segment_ids, segment_ids)
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    return matmul("bhqk,bhkd->bhqd", probs, v, policy)


def chunked_attention(q, k, v, policy="float32", segment_ids=None, block: int = 512) -> jax.Array:
    """Blockwise causal attention with an online softmax (see the module doc); equals :func:`plain_attention`.

    Args:
        q, k, v: float ``[B, H, T, hd]``.
        policy: precision policy of the two products.
        segment_ids: optional int32 ``[B, T]`` document ids (attention stays inside a document).
        block: query and key block length (tokens); ``T`` is padded up to a multiple (padded keys are masked).
    """
    b, h, t, hd = q.shape
    block = max(1, min(block, t))
    n = -(-t // block)
    pad = n * block - t
    seg = segment_ids if segment_ids is not None else None
    if pad:
        q, k, v = (jnp.pad(x, ((0, 0), (0, 0), (0, pad), (0, 0))) for x in (q, k, v))
        if seg is not None:
            seg = jnp.pad(seg, ((0, 0), (0, pad)), constant_values=-1)
    scale = 1.0 / math.sqrt(hd)
    pol = as_policy(policy).name

    def blocks(x):  # [B, H, n*blk, hd] -> [n, B, H, blk, hd]
        return x.reshape(b, h, n, block, hd).transpose(2, 0, 1, 3, 4)

    qb, kb, vb = blocks(q), blocks(k), blocks(v)
    segb = seg.reshape(b, n, block).transpose(1, 0, 2) if seg is not None else jnp.zeros((n, 1, block), jnp.int32)
    idx = jnp.arange(n * block, dtype=jnp.int32).reshape(n, block)

    @jax.checkpoint
    def key_step(carry, xs, qi, q_idx, q_seg):
        o, m, l = carry
        kj, vj, k_idx, k_seg = xs

        def compute(carry):
            o, m, l = carry
            s = matmul("bhqd,bhkd->bhqk", qi, kj, pol) * scale
            mask = _mask(q_idx, k_idx, q_seg if seg is not None else None, k_seg if seg is not None else None)
            mask = mask & (k_idx < t)[None, None, None, :]
            s = jnp.where(mask, s, _NEG)
            m_new = jnp.maximum(m, jnp.max(s, axis=-1))
            p = jnp.where(mask, jnp.exp(s - m_new[..., None]), 0.0)
            corr = jnp.exp(m - m_new)
            l_new = l * corr + jnp.sum(p, axis=-1)
            o_new = o * corr[..., None] + matmul("bhqk,bhkd->bhqd", p, vj, pol)
            return o_new, m_new, l_new

        needed = k_idx[0] <= q_idx[-1]  # some key of this block is at or before some query of the block
        return jax.lax.cond(needed, compute, lambda c: c, (o, m, l)), None

    @jax.checkpoint
    def query_step(_, xs):
        qi, q_idx, q_seg = xs
        init = (jnp.zeros((b, h, block, hd), jnp.float32), jnp.full((b, h, block), _NEG, jnp.float32),
                jnp.zeros((b, h, block), jnp.float32))
        (o, _, l), _ = jax.lax.scan(lambda c, x: key_step(c, x, qi, q_idx, q_seg), init, (kb, vb, idx, segb))
        return None, o / jnp.where(l == 0, 1.0, l)[..., None]

    _, out = jax.lax.scan(query_step, None, (qb, idx, segb))  # [n, B, H, blk, hd]
    out = out.transpose(1, 2, 0, 3, 4).reshape(b, h, n * block, hd)
    return out[:, :, :t]


def dot_product_attention(q, k, v, policy="float32", segment_ids=None, implementation: str | None = None):
    """``jax.nn.dot_product_attention`` (causal). ``implementation`` None: XLA's off GPU; on GPU JAX's own choice
    (cuDNN flash attention where it supports the dtype, head size and mask, else XLA's)."""
    pol = as_policy(policy)
    if implementation is None and jax.default_backend() != "gpu":
        implementation = "xla"  # on GPU, None lets JAX pick cuDNN flash when it supports the case (bf16, mask)
    dt = pol.compute_dtype
    tr = lambda x: x.transpose(0, 2, 1, 3).astype(dt)  # noqa: E731  [B, H, T, hd] -> [B, T, H, hd]
    mask = None
    if segment_ids is not None:
        mask = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]
    with jax.default_matmul_precision("highest" if pol.name == "float32" else "default"):
        out = jax.nn.dot_product_attention(tr(q), tr(k), tr(v), mask=mask, is_causal=True,
                                           implementation=implementation)
    return out.astype(jnp.float32).transpose(0, 2, 1, 3)


def attention(q, k, v, impl: str = "xla", policy="float32", segment_ids=None, block: int = 512) -> jax.Array:
    """Dispatch to the kernel named ``impl`` (:data:`ATTENTION_IMPLS`); raises ``ValueError`` otherwise."""
    if impl == "xla":
        return plain_attention(q, k, v, policy, segment_ids)
    if impl == "chunked":
        return chunked_attention(q, k, v, policy, segment_ids, block)
    if impl == "dot_product":
        return dot_product_attention(q, k, v, policy, segment_ids)
    raise InputError(f"unknown attention {impl!r}; use one of {', '.join(ATTENTION_IMPLS)}")
