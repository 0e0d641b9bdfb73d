"""The instruction-tuning loss (SPEC §5): next-token cross-entropy summed over response tokens of packed rows.

A batch is ``{tokens, loss_mask, segment_ids}`` (int ``[B, L]``, :mod:`xgen_train.loop.sft_data`). Labels are
shifted per example: position ``t`` is scored on predicting ``tokens[t + 1]`` only when ``t + 1`` lies in the
same example (``segment_ids[t + 1] == segment_ids[t] > 0``) and ``loss_mask[t + 1] == 1``; so the first token of
an example is never a target of the previous one, and padding (segment 0) is never scored. Attention stays
inside an example and rotary positions restart at each example (:func:`segment_positions`).

The functions here return *sums*; the train step divides once by the response-token count of the whole
batch, across every gradient-accumulation micro-step (:func:`xgen_train.loop.step.token_sum_value_and_grad`),
so every response token weighs the same whatever the lengths of the responses or the micro-batching
(the normalisation of transformers issue #24725).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from xgen_train.model.loss import _fused_loss
from xgen_train.model.numerics import NumericsOptions

__all__ = ["make_sft_loss_fn", "response_token_count", "segment_positions", "sft_targets"]


def sft_targets(tokens: jax.Array, loss_mask: jax.Array, segment_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(targets int32, weights float32)``, both ``[B, L]``: ``tokens[:, t+1]`` and its 0/1 weight (module
    doc); the last position of each row has target 0 and weight 0."""
    nxt = tokens[:, 1:]
    same = (segment_ids[:, 1:] == segment_ids[:, :-1]) & (segment_ids[:, 1:] > 0)
    w = (same & (loss_mask[:, 1:] > 0)).astype(jnp.float32)
    b = tokens.shape[0]
    targets = jnp.concatenate([nxt, jnp.zeros((b, 1), nxt.dtype)], axis=1).astype(jnp.int32)
    return targets, jnp.concatenate([w, jnp.zeros((b, 1), jnp.float32)], axis=1)


def response_token_count(batch: dict) -> jax.Array:
    """float32 scalar: the number of scored positions of ``batch`` (:func:`sft_targets` weights summed)."""
    return jnp.sum(sft_targets(batch["tokens"], batch["loss_mask"], batch["segment_ids"])[1])


def segment_positions(segment_ids: jax.Array) -> jax.Array:
    """int32 ``[B, L]`` rotary positions restarting at 0 wherever the segment id changes."""
    t = jnp.arange(segment_ids.shape[1], dtype=jnp.int32)[None, :]
    start = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], dtype=bool),
                             segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
    first = jax.lax.cummax(jnp.where(start, t, 0), axis=1)
    return (t - first).astype(jnp.int32)


def make_sft_loss_fn(cfg, numerics: NumericsOptions | None = None):
    """``loss_sum(params, batch) -> (objective_sum, {"ce": ce_sum, "z": z_sum})``, float32 sums (module doc).

    ``objective_sum = ce_sum + z_loss * z_sum`` is what is differentiated; ``ce_sum`` is the summed
    cross-entropy in nats over the scored positions, ``z_sum`` the summed ``logsumexp^2``. With
    ``numerics.loss_chunk > 0`` the LM head runs in the fused chunked loop of :mod:`xgen_train.model.loss`.
    ``numerics.doc_mask`` is ignored: segments always mask attention here. ``batch`` may carry ``labels``
    (int ``[B, L]``, the target of each position) in place of the shifted tokens; positions whose
    :func:`sft_targets` weight is 0 are never scored whatever their label.
    """
    import haiku as hk

    from xgen_train.model.model import linear_logits, llama_hidden, lm_head_weight

    num = (numerics or NumericsOptions()).resolved()
    policy = num.policy

    def fwd(tokens, loss_mask, segment_ids, labels):
        h = llama_hidden(tokens, cfg, policy, segment_positions(segment_ids), attention=num.attention,
                         attention_block=num.attention_block, remat=num.remat, segment_ids=segment_ids)
        w = lm_head_weight(cfg)
        targets, weights = sft_targets(tokens, loss_mask, segment_ids)
        if labels is not None:  # explicit labels replace the shifted tokens; the weights stay the mask's
            targets = labels.astype(jnp.int32)
        b, l_, d = h.shape
        if num.loss_chunk > 0:
            total, ce_sum, z_sum = _fused_loss(h.reshape(b * l_, d), w, targets.reshape(-1), weights.reshape(-1),
                                               int(num.loss_chunk), float(num.z_loss), policy.name)
        else:
            logits = linear_logits(h, w, policy).astype(jnp.float32)
            logz = jax.nn.logsumexp(logits, axis=-1)
            gold = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
            ce_sum, z_sum = jnp.sum(weights * (logz - gold)), jnp.sum(weights * jnp.square(logz))
            total = ce_sum + num.z_loss * z_sum if num.z_loss else ce_sum
        return total, {"ce": jax.lax.stop_gradient(ce_sum), "z": jax.lax.stop_gradient(z_sum)}

    model = hk.without_apply_rng(hk.transform(fwd))

    def loss_sum(params, batch):
        return model.apply(params, batch["tokens"], batch["loss_mask"], batch["segment_ids"], batch.get("labels"))

    return loss_sum
