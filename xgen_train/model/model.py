"""The LLaMA decoder of SPEC §3 in Haiku, with parameters laid out exactly like Hugging Face's.

Architecture (SPEC §3): token embedding -> ``n_layers`` pre-norm blocks
``x = x + attn(rms_norm(x)); x = x + mlp(rms_norm(x))`` -> final RMSNorm -> LM head.
Attention is causal multi-head attention (no grouped KV) with rotary position embeddings
(theta 10,000, Hugging Face's rotate-half layout) and scores scaled by ``1/sqrt(head_dim)``; the MLP
is SwiGLU ``down(silu(gate(x)) * up(x))``. No biases; input embedding and LM head are not tied.

Parameter layout. Every parameter is named and shaped like its ``LlamaForCausalLM`` counterpart:
the Haiku module ``model/layers_0/self_attn/q_proj`` holds ``weight`` of shape ``[out, in]`` (PyTorch
``nn.Linear`` layout, so ``y = x @ weight.T``), and its flat key ``model/layers_0/self_attn/q_proj/weight``
maps to ``model.layers.0.self_attn.q_proj.weight`` (:func:`hf_param_names`). No transposition or
reshaping is needed for export.

Numerics (SPEC §3): parameters, residual stream, RMSNorm, rotary, softmax and the loss are float32.
``compute_dtype`` sets the operand dtype of the matrix multiplications (projections, ``QK^T``,
``PV``, LM head); with ``jnp.bfloat16`` operands are rounded to bfloat16 and products accumulate and
return in float32 (``preferred_element_type``), in the backward pass too (:mod:`xgen_train.model.precision`); with
``float32`` every product sets ``Precision.HIGHEST``. The default is ``float32`` (exact reference numerics).
Attention kernels live in :mod:`xgen_train.model.attention`; training (:mod:`xgen_train.model.loss`) uses
:func:`llama_hidden` + :func:`lm_head_weight` so the LM head can run inside the chunked loss.

Initialisation follows Hugging Face's ``LlamaPreTrainedModel``: every matrix ~ N(0, 0.02^2),
RMSNorm gains = 1.
"""
from __future__ import annotations

from functools import partial

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from xgen_data.errors import InputError
from xgen_train.model.attention import ATTENTION_IMPLS, attention, plain_attention
from xgen_train.model.config import ModelConfig
from xgen_train.model.layout import constrain_batch, gather_table
from xgen_train.model.precision import as_policy, linear

INIT_STD = 0.02  # Hugging Face LlamaConfig.initializer_range

__all__ = [
    "INIT_STD", "apply_rotary", "build_model", "flat_params", "hf_param_names", "init_params",
    "linear_logits", "llama_forward", "llama_hidden", "lm_head_weight", "rms_norm", "rotary_cos_sin", "rotate_half", "unflat_params",
]


def rms_norm(x: jax.Array, weight: jax.Array, eps: float = 1e-6) -> jax.Array:
    """RMSNorm computed in float32 (SPEC §3): ``x / sqrt(mean(x^2, -1) + eps) * weight``.

    Args:
        x: ``[..., d]`` any float dtype; it is upcast to float32 first.
        weight: ``[d]`` gain.
        eps: added to the mean square (SPEC §3: 1e-6).
    Returns:
        float32 ``[..., d]``.
    """
    x = x.astype(jnp.float32)
    var = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
    return x * jax.lax.rsqrt(var + eps) * weight.astype(jnp.float32)


def rotary_cos_sin(positions: jax.Array, head_dim: int, theta: float = 10000.0) -> tuple[jax.Array, jax.Array]:
    """Rotary tables in Hugging Face's layout (SPEC §3).

    ``inv_freq[j] = theta ** (-2j / head_dim)`` for ``j < head_dim/2``; angles ``pos * inv_freq`` are
    repeated twice along the last axis (``cat(freqs, freqs)``), as in ``LlamaRotaryEmbedding``.

    Args:
        positions: int ``[..., T]`` token positions (0-based).
        head_dim: even head width.
    Returns:
        ``(cos, sin)``, float32 ``[..., T, head_dim]``.
    """
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def rotate_half(x: jax.Array) -> jax.Array:
    """``cat(-x[..., d/2:], x[..., :d/2])`` (Hugging Face ``rotate_half``)."""
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate queries or keys: ``x * cos + rotate_half(x) * sin`` (float32).

    Args:
        x: ``[B, H, T, head_dim]``.
        cos, sin: ``[T, head_dim]`` or ``[B, 1, T, head_dim]`` from :func:`rotary_cos_sin`.
    """
    x = x.astype(jnp.float32)
    return x * cos + rotate_half(x) * sin


def _param(name: str, shape: tuple[int, ...], init) -> jax.Array:
    return hk.get_parameter(name, shape, jnp.float32, init=init)


def _linear(scope: str, x: jax.Array, out_dim: int, compute_dtype) -> jax.Array:
    """Bias-free linear layer with a PyTorch-layout ``weight [out, in]``: ``x @ weight.T``."""
    with hk.name_scope(scope):
        w = _param("weight", (out_dim, x.shape[-1]), hk.initializers.RandomNormal(INIT_STD))
    return linear(x, w, compute_dtype)


def _norm(scope: str, x: jax.Array, eps: float) -> jax.Array:
    with hk.name_scope(scope):
        w = _param("weight", (x.shape[-1],), jnp.ones)
    return rms_norm(x, w, eps)


def _attention(x: jax.Array, cos: jax.Array, sin: jax.Array, cfg: ModelConfig, compute_dtype, impl: str,
               block: int, segment_ids, kv=None) -> tuple[jax.Array, tuple | None]:
    """Self-attention of ``x [B, T, d]``; with ``kv = (k_cache, v_cache, layer, start)`` (float32
    ``[n_layers, B, H, S, hd]``, Python int, int scalar) the new keys/values are written in place at layer
    ``layer``, slots ``start ..``, and the queries attend to that layer's cache
    (:func:`xgen_train.model.attention.plain_attention` with ``q_start``). Returns ``(out, (k_cache, v_cache))``
    with the written cache, or ``(out, None)`` without one."""
    b, t, d = x.shape
    h, hd = cfg.n_heads, cfg.head_dim

    def heads(y: jax.Array) -> jax.Array:  # [B, T, d] -> [B, H, T, hd]
        return y.reshape(b, t, h, hd).transpose(0, 2, 1, 3)

    q = apply_rotary(heads(_linear("q_proj", x, d, compute_dtype)), cos, sin)
    k = apply_rotary(heads(_linear("k_proj", x, d, compute_dtype)), cos, sin)
    v = heads(_linear("v_proj", x, d, compute_dtype))
    if kv is None:
        out, new_kv = attention(q, k, v, impl, compute_dtype, segment_ids, block), None
    else:
        k_cache, v_cache, layer, start = kv  # the whole cache is updated so a donated buffer is written in place
        k_cache = jax.lax.dynamic_update_slice(k_cache, k[None], (layer, 0, 0, start, 0))
        v_cache = jax.lax.dynamic_update_slice(v_cache, v[None], (layer, 0, 0, start, 0))
        out = plain_attention(q, k_cache[layer], v_cache[layer], compute_dtype, q_start=start)
        new_kv = (k_cache, v_cache)
    out = out.transpose(0, 2, 1, 3).reshape(b, t, d)
    return _linear("o_proj", out, d, compute_dtype), new_kv


def _mlp(x: jax.Array, cfg: ModelConfig, compute_dtype) -> jax.Array:
    gate = _linear("gate_proj", x, cfg.intermediate, compute_dtype)
    up = _linear("up_proj", x, cfg.intermediate, compute_dtype)
    return _linear("down_proj", jax.nn.silu(gate) * up, cfg.hidden, compute_dtype)


def _block(x, cos, sin, segment_ids, kv=None, *, cfg: ModelConfig, compute_dtype, impl: str, block: int):
    """One pre-norm decoder block (call inside the ``layers_i`` name scope): ``(x, kv)`` as :func:`_attention`."""
    h = _norm("input_layernorm", x, cfg.rms_eps)
    with hk.name_scope("self_attn"):
        a, kv = _attention(h, cos, sin, cfg, compute_dtype, impl, block, segment_ids, kv)
        x = x + a
    h = _norm("post_attention_layernorm", x, cfg.rms_eps)
    with hk.name_scope("mlp"):
        x = x + _mlp(h, cfg, compute_dtype)
    return x, kv


def llama_hidden(tokens: jax.Array, cfg: ModelConfig, compute_dtype="float32", positions: jax.Array | None = None,
                 *, attention: str = "xla", attention_block: int = 512, remat: bool = False,
                 segment_ids: jax.Array | None = None, cache: dict | None = None, cache_start=0):
    """Final normed hidden states of the LLaMA decoder (everything but the LM head); call inside ``hk.transform``.

    Args:
        tokens: int ``[batch, seq]`` token ids in ``[0, vocab_size)`` (out-of-range ids are clamped by the
            gather, so callers must validate data; the loader does not check ids).
        cfg: model shape.
        compute_dtype: matmul precision: ``"float32"``/``"bfloat16"`` or a
            :class:`xgen_train.model.precision.PrecisionPolicy`.
        positions: optional int ``[batch, seq]`` rotary positions; default ``0..seq-1``.
        attention, attention_block: kernel of :mod:`xgen_train.model.attention` and its block size.
        remat: rematerialise each decoder block in the backward pass (``hk.remat``).
        segment_ids: optional int32 ``[batch, seq]`` document ids (attention stays inside a document).
        cache: optional key/value cache ``{"k", "v"}`` float32 ``[n_layers, batch, n_heads, S, head_dim]``
            (:func:`xgen_train.evaluate.generate.init_cache`) whose slots ``< cache_start`` hold the keys and
            values of the earlier tokens; ``tokens`` then sit at positions ``cache_start ..`` (int scalar, may
            be traced; ``cache_start + seq <= S``), attention reads the cache (``attention`` is not used) and
            ``positions`` / ``segment_ids`` must be None.
    Returns:
        float32 ``[batch, seq, hidden]`` (after the final RMSNorm); with ``cache``: ``(hidden, cache)``, the
        cache with slots ``cache_start .. cache_start+seq-1`` written.
    Raises:
        ValueError: ``tokens`` is not 2-D or ``seq > cfg.max_positions``, or an unknown ``attention``.
    """
    policy = as_policy(compute_dtype)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [batch, seq], got shape {tokens.shape}")
    b, t = tokens.shape
    if t > cfg.max_positions:
        raise InputError(f"sequence length {t} exceeds max_positions={cfg.max_positions}")
    if attention not in ATTENTION_IMPLS:
        raise InputError(f"unknown attention {attention!r}; use one of {', '.join(ATTENTION_IMPLS)}")
    if cache is not None and (positions is not None or segment_ids is not None):
        raise ValueError("a key/value cache takes neither positions nor segment_ids (they start at cache_start)")
    if positions is None:
        positions = cache_start + jnp.arange(t, dtype=jnp.int32)
        cos, sin = rotary_cos_sin(positions, cfg.head_dim, cfg.rope_theta)  # [T, hd]
    else:
        cos, sin = rotary_cos_sin(positions, cfg.head_dim, cfg.rope_theta)  # [B, T, hd]
        cos, sin = cos[:, None], sin[:, None]

    block_fn = partial(_block, cfg=cfg, compute_dtype=policy, impl=attention, block=attention_block)
    if remat:
        block_fn = hk.remat(block_fn)
    with hk.name_scope("model"):
        with hk.name_scope("embed_tokens"):
            emb = _param("weight", (cfg.vocab_size, cfg.hidden), hk.initializers.RandomNormal(INIT_STD))
        x = constrain_batch(jnp.take(gather_table(emb), tokens, axis=0))  # float32 [B, T, d], B split over the mesh
        for i in range(cfg.n_layers):
            with hk.name_scope(f"layers_{i}"):
                kv = None if cache is None else (cache["k"], cache["v"], i, cache_start)
                x, kv = block_fn(x, cos, sin, segment_ids, kv)
            if kv is not None:
                cache = {"k": kv[0], "v": kv[1]}
        h = _norm("norm", x, cfg.rms_eps)
    return h if cache is None else (h, cache)


def lm_head_weight(cfg: ModelConfig) -> jax.Array:
    """The LM head's ``weight [vocab, hidden]`` (parameter ``lm_head/weight``); call inside ``hk.transform``."""
    with hk.name_scope("lm_head"):
        return _param("weight", (cfg.vocab_size, cfg.hidden), hk.initializers.RandomNormal(INIT_STD))


def llama_forward(tokens: jax.Array, cfg: ModelConfig, compute_dtype="float32",
                  positions: jax.Array | None = None, **kw) -> jax.Array:
    """The LLaMA forward pass (SPEC §3); call inside ``hk.transform`` (see :func:`build_model`).

    Args:
        tokens, cfg, compute_dtype, positions: as :func:`llama_hidden` (``kw``: its keyword options).
    Returns:
        float32 logits ``[batch, seq, vocab_size]`` (next-token scores at every position); with a ``cache``
        keyword: ``(logits, cache)`` (:func:`llama_hidden`).
    Raises:
        ValueError: ``tokens`` is not 2-D or ``seq > cfg.max_positions``.
    """
    policy = as_policy(compute_dtype)
    out = llama_hidden(tokens, cfg, policy, positions, **kw)
    if kw.get("cache") is None:
        return linear_logits(out, lm_head_weight(cfg), policy)
    h, cache = out
    return linear_logits(h, lm_head_weight(cfg), policy), cache


def linear_logits(h: jax.Array, w: jax.Array, compute_dtype="float32") -> jax.Array:
    """LM head: float32 logits ``[..., V]`` = ``h [..., d] @ w[V, d].T`` under the precision policy."""
    return linear(h, w, compute_dtype)


def build_model(cfg: ModelConfig, compute_dtype="float32", **kw) -> hk.Transformed:
    """Haiku ``(init, apply)`` pair for :func:`llama_forward` (no RNG needed in ``apply``).

    ``init(rng, tokens) -> params``; ``apply(params, tokens) -> logits`` float32 ``[B, T, V]``. ``kw``:
    :func:`llama_hidden`'s keyword options (``attention``, ``attention_block``, ``remat``);
    ``apply(params, tokens, cache=c, cache_start=s) -> (logits, cache)`` runs on a key/value cache.
    """
    compute_dtype = as_policy(compute_dtype)

    def fwd(tokens: jax.Array, **call_kw):
        return llama_forward(tokens, cfg, compute_dtype, **kw, **call_kw)

    return hk.without_apply_rng(hk.transform(fwd))


def init_params(cfg: ModelConfig, rng: jax.Array | int = 0) -> hk.Params:
    """Fresh float32 parameters for ``cfg`` (SPEC §3 init as in HF: N(0, 0.02) matrices, unit norms).

    ``rng`` is a ``jax.random`` key or an int seed. Parameter count equals
    :func:`xgen_train.model.config.count_parameters`.
    """
    if isinstance(rng, int):
        rng = jax.random.PRNGKey(rng)
    dummy = jnp.zeros((1, 1), dtype=jnp.int32)
    return build_model(cfg).init(rng, dummy)


_LAYER_PARAMS = (
    "input_layernorm", "self_attn/q_proj", "self_attn/k_proj", "self_attn/v_proj", "self_attn/o_proj",
    "post_attention_layernorm", "mlp/gate_proj", "mlp/up_proj", "mlp/down_proj",
)


def hf_param_names(cfg: ModelConfig) -> dict[str, str]:
    """Map each flat Haiku parameter key to its Hugging Face ``LlamaForCausalLM`` state-dict name.

    Keys are ``"<haiku module>/<param>"`` as produced by :func:`flat_params` (also the checkpoint keys),
    e.g. ``"model/layers_0/self_attn/q_proj/weight" -> "model.layers.0.self_attn.q_proj.weight"``:
    ``/`` becomes ``.`` and ``layers_N`` becomes ``layers.N`` (Haiku scope names must be identifiers).
    Shapes are identical on both sides (``[out, in]`` linears, ``[vocab, hidden]`` embedding and
    LM head, ``[hidden]`` norms), so export is a rename. The mapping is one-to-one and covers every
    parameter (``len == 9 * n_layers + 3``).
    """
    names = {"model/embed_tokens/weight": "model.embed_tokens.weight"}
    for i in range(cfg.n_layers):
        for part in _LAYER_PARAMS:
            names[f"model/layers_{i}/{part}/weight"] = f"model.layers.{i}.{part.replace('/', '.')}.weight"
    names["model/norm/weight"] = "model.norm.weight"
    names["lm_head/weight"] = "lm_head.weight"
    return names


def flat_params(params: hk.Params) -> dict[str, jax.Array]:
    """``{module: {name: array}}`` -> ``{"module/name": array}`` (sorted keys)."""
    return {f"{m}/{n}": v for m in sorted(params) for n, v in sorted(params[m].items())}


def unflat_params(flat: dict[str, np.ndarray | jax.Array]) -> dict[str, dict[str, jax.Array]]:
    """Inverse of :func:`flat_params` (splits each key at its last ``/``)."""
    out: dict[str, dict] = {}
    for key, value in flat.items():
        module, _, name = key.rpartition("/")
        if not module:
            raise ValueError(f"parameter key {key!r} has no module part")
        out.setdefault(module, {})[name] = value
    return out

