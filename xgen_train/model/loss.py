"""Next-token cross-entropy (SPEC §4 trainer loss), plain and chunked, with an optional z-loss.

The loss of a batch ``tokens int32 [B, L]`` is the mean over the ``B * (L - 1)`` positions ``t < L - 1`` of
``logsumexp(logits[b, t]) - logits[b, t, tokens[b, t + 1]]`` (nats; EOS is an ordinary target), in float32.
The optional z-loss (PaLM, Chowdhery et al. 2022, §5) adds ``z_loss * mean(logsumexp(logits)^2)``; it keeps
the softmax normaliser near 1 (``1e-4`` in PaLM).

* :func:`next_token_loss`: from full float32 logits ``[B, L, V]`` (reference; used for evaluation).
* :func:`chunked_next_token_loss`: from the final hidden states ``h [B, L, d]`` and the LM head ``w [V, d]``;
  the LM head runs inside a loop over chunks of ``chunk`` positions, so full ``[B, L, V]`` logits never exist:
  peak extra memory is ``chunk * V`` float32 values a few times over. It is a ``jax.custom_vjp`` that computes
  the gradients with respect to ``h`` and ``w`` in the same pass as the loss (``softmax - onehot`` per chunk,
  Liger-kernel style "fused linear cross-entropy"), so the backward does not store or recompute logits; the
  three LM-head products per chunk (logits, ``dh``, ``dw``) follow the precision policy.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from xgen_data.errors import InputError
from xgen_train.model.precision import as_policy, matmul

__all__ = ["chunked_next_token_loss", "next_token_loss", "shifted_targets"]


def next_token_loss(logits: jax.Array, tokens: jax.Array, z_loss: float = 0.0, return_aux: bool = False):
    """Mean next-token cross-entropy in nats (float32 scalar), from full logits.

    Args:
        logits: float ``[B, L, V]`` from the model on the full sequence ``tokens``.
        tokens: int ``[B, L]``; position ``t`` is scored on predicting ``tokens[:, t+1]``, so there are
            ``B * (L - 1)`` terms. EOS is a normal target.
        z_loss: weight of ``mean(logsumexp^2)`` added to the returned loss (0: none).
        return_aux: also return ``{"ce": cross-entropy, "z": mean logsumexp^2}`` (float32 scalars).
    Returns:
        ``loss`` or ``(loss, aux)``; ``loss = ce + z_loss * z``.
    """
    logits = logits[:, :-1].astype(jnp.float32)
    targets = tokens[:, 1:]
    logz = jax.nn.logsumexp(logits, axis=-1)
    gold = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    ce = jnp.mean(logz - gold)
    z = jnp.mean(jnp.square(logz))
    loss = ce + z_loss * z if z_loss else ce
    return (loss, {"ce": ce, "z": z}) if return_aux else loss


def shifted_targets(tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(targets, weights)`` int32/float32 ``[B, L]``: ``tokens[:, t+1]`` and 1 for ``t < L-1``; the last
    position of each row gets target 0 and weight 0 (it predicts nothing)."""
    b, _ = tokens.shape
    targets = jnp.concatenate([tokens[:, 1:], jnp.zeros((b, 1), tokens.dtype)], axis=1).astype(jnp.int32)
    weights = jnp.ones(tokens.shape, jnp.float32).at[:, -1].set(0.0)
    return targets, weights


def _chunks(n: int, chunk: int) -> tuple[int, int]:
    chunk = n if chunk <= 0 else min(chunk, n)
    n_chunks = -(-n // chunk)
    return chunk, n_chunks


def _fused(h, w, targets, weights, chunk: int, z_loss: float, policy: str, with_grads: bool):
    """Sums over positions of ``ce`` and ``logz^2`` (and, if ``with_grads``, d(sum ce + z sum logz^2)/d(h, w))."""
    n, d = h.shape
    chunk, n_chunks = _chunks(n, chunk)
    pad = n_chunks * chunk - n
    if pad:
        h = jnp.pad(h, ((0, pad), (0, 0)))
        targets = jnp.pad(targets, (0, pad))
        weights = jnp.pad(weights, (0, pad))
    hs = h.reshape(n_chunks, chunk, d)
    ts = targets.reshape(n_chunks, chunk)
    ws = weights.reshape(n_chunks, chunk)

    def body(carry, xs):
        hc, tc, wc = xs
        logits = matmul("nd,vd->nv", hc, w, policy)  # float32 [chunk, V]
        m = jnp.max(logits, axis=-1, keepdims=True)
        e = jnp.exp(logits - m)
        s = jnp.sum(e, axis=-1, keepdims=True)
        logz = (m + jnp.log(s))[:, 0]
        gold = jnp.take_along_axis(logits, tc[:, None], axis=-1)[:, 0]
        ce_sum = carry[0] + jnp.sum(wc * (logz - gold))
        z_sum = carry[1] + jnp.sum(wc * jnp.square(logz))
        if not with_grads:
            return (ce_sum, z_sum), None
        # d/dlogits of w_t * (logz - gold + z_loss * logz^2) = w_t * (p * (1 + 2 z_loss logz) - onehot)
        scale = wc * (1.0 + 2.0 * z_loss * logz)
        dlogits = e * (scale / s[:, 0])[:, None]
        dlogits = dlogits.at[jnp.arange(chunk), tc].add(-wc)  # minus the one-hot target (a scatter, no [n, V] pass)
        dh = matmul("nv,vd->nd", dlogits, w, policy)
        dw = carry[2] + matmul("nv,nd->vd", dlogits, hc, policy)
        return (ce_sum, z_sum, dw), dh

    zero = jnp.zeros((), jnp.float32)
    init = (zero, zero, jnp.zeros(w.shape, jnp.float32)) if with_grads else (zero, zero)
    carry, dhs = jax.lax.scan(body, init, (hs, ts, ws))
    if not with_grads:
        return carry[0], carry[1]
    dh = dhs.reshape(n_chunks * chunk, d)[:n]
    return carry[0], carry[1], dh, carry[2]


@partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _fused_loss(h, w, targets, weights, chunk, z_loss, policy):
    ce_sum, z_sum = _fused(h, w, targets, weights, chunk, z_loss, policy, with_grads=False)
    return ce_sum + z_loss * z_sum, ce_sum, z_sum


def _fused_loss_fwd(h, w, targets, weights, chunk, z_loss, policy):
    ce_sum, z_sum, dh, dw = _fused(h, w, targets, weights, chunk, z_loss, policy, with_grads=True)
    return (ce_sum + z_loss * z_sum, ce_sum, z_sum), (dh.astype(h.dtype), dw.astype(w.dtype))


def _fused_loss_bwd(chunk, z_loss, policy, res, g):
    dh, dw = res
    g_total = g[0]  # ce_sum and z_sum are reported for logging only; they carry no gradient of their own
    return g_total * dh, g_total * dw, None, None


_fused_loss.defvjp(_fused_loss_fwd, _fused_loss_bwd)


def chunked_next_token_loss(h: jax.Array, w: jax.Array, tokens: jax.Array, chunk: int = 512, z_loss: float = 0.0,
                            policy="float32", return_aux: bool = False):
    """Next-token loss from hidden states without materialising ``[B, L, V]`` logits (see the module doc).

    Args:
        h: float32 ``[B, L, d]`` final (normed) hidden states; ``logits = h @ w.T``.
        w: float32 ``[V, d]`` LM-head weight (PyTorch layout).
        tokens: int ``[B, L]``.
        chunk: positions per chunk of the LM-head loop (``<= 0``: one chunk); ``B*L`` is padded up to a
            multiple with weight-0 rows.
        z_loss: weight of ``mean(logsumexp^2)`` (PaLM z-loss).
        policy: precision of the LM-head products (:mod:`xgen_train.model.precision`).
        return_aux: also return ``{"ce", "z"}`` (float32 scalars; no gradient flows through them).
    Returns:
        ``loss`` (float32 scalar, ``ce + z_loss * z``) or ``(loss, aux)``; equals :func:`next_token_loss` on
        ``h @ w.T`` to float32 rounding (in float32 policy), and so do its gradients.
    """
    b, l_, d = h.shape
    targets, weights = shifted_targets(tokens)
    n_terms = b * (l_ - 1)
    total, ce_sum, z_sum = _fused_loss(h.reshape(b * l_, d), w, targets.reshape(-1), weights.reshape(-1),
                                       int(chunk), float(z_loss), as_policy(policy).name)
    loss = total / n_terms
    if return_aux:
        return loss, {"ce": jax.lax.stop_gradient(ce_sum) / n_terms, "z": jax.lax.stop_gradient(z_sum) / n_terms}
    return loss


def make_loss_fn(cfg, numerics=None):
    """``loss_fn(params, tokens int32 [B, L]) -> (loss, aux)`` of the model under ``numerics``.

    Args:
        cfg: :class:`xgen_train.model.config.ModelConfig`.
        numerics: :class:`xgen_train.model.numerics.NumericsOptions` (default: all defaults); ``auto`` choices are
            resolved for the current backend.
    Returns:
        a pure function: ``loss`` float32 scalar (``ce + z_loss * z``, the objective that is differentiated) and
        ``aux = {"ce": mean cross-entropy in nats/token, "z": mean logsumexp^2}``. With ``loss_chunk > 0`` the
        LM head runs inside :func:`chunked_next_token_loss`; with 0 full logits feed :func:`next_token_loss`.
    Raises:
        ValueError: ``doc_mask`` without ``eos_id``.
    """
    import haiku as hk

    from xgen_train.model.attention import segments_from_eos
    from xgen_train.model.model import linear_logits, llama_hidden, lm_head_weight
    from xgen_train.model.numerics import NumericsOptions

    num = (numerics or NumericsOptions()).resolved()
    if num.doc_mask and num.eos_id is None:
        raise InputError("doc_mask needs eos_id (the shards manifest's eos_id)")
    policy = num.policy

    def fwd(tokens):
        segment_ids = positions = None
        if num.doc_mask:
            segment_ids, positions = segments_from_eos(tokens, num.eos_id)
        h = llama_hidden(tokens, cfg, policy, positions, attention=num.attention,
                         attention_block=num.attention_block, remat=num.remat, segment_ids=segment_ids)
        w = lm_head_weight(cfg)
        if num.loss_chunk > 0:
            return chunked_next_token_loss(h, w, tokens, num.loss_chunk, num.z_loss, policy, return_aux=True)
        return next_token_loss(linear_logits(h, w, policy), tokens, num.z_loss, return_aux=True)

    model = hk.without_apply_rng(hk.transform(fwd))
    return model.apply
