"""Model tests (SPEC §3): parameter count, names, shapes, causality, RoPE, RMSNorm, and a numpy reference."""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xgen_data.errors import InputError
from xgen_train.model.config import CONFIGS, ModelConfig, count_parameters, get_config
from xgen_train.model.model import (
    apply_rotary,
    build_model,
    flat_params,
    hf_param_names,
    init_params,
    rms_norm,
    rotary_cos_sin,
    unflat_params,
)

MICRO = ModelConfig(vocab_size=64, hidden=16, intermediate=40, n_layers=2, n_heads=2, max_positions=32)


@pytest.fixture(scope="module")
def tiny_params():
    return init_params(CONFIGS["tiny"], 0)


def _shapes_7b():
    cfg = CONFIGS["xgen-7b"]
    return jax.eval_shape(lambda: build_model(cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32)))


def test_count_parameters_xgen7b_matches_spec():
    assert count_parameters(CONFIGS["xgen-7b"]) == 6_895_702_016
    cfg = get_config("xgen-7b")
    assert (cfg.hidden, cfg.intermediate, cfg.n_layers, cfg.n_heads, cfg.vocab_size, cfg.max_positions) == (
        4096, 11008, 32, 32, 51200, 8192)
    assert cfg.rope_theta == 10000.0 and cfg.rms_eps == 1e-6 and cfg.head_dim == 128


def test_count_parameters_matches_haiku_eval_shape_xgen7b():
    shapes = _shapes_7b()  # no allocation
    flat = flat_params(shapes)
    assert sum(int(np.prod(s.shape)) for s in flat.values()) == 6_895_702_016
    assert all(s.dtype == jnp.float32 for s in flat.values())
    # HF LlamaForCausalLM shapes: linears [out, in], untied embedding and LM head
    assert flat["model/embed_tokens/weight"].shape == (51200, 4096)
    assert flat["lm_head/weight"].shape == (51200, 4096)
    assert flat["model/layers_31/self_attn/q_proj/weight"].shape == (4096, 4096)
    assert flat["model/layers_0/mlp/gate_proj/weight"].shape == (11008, 4096)
    assert flat["model/layers_0/mlp/up_proj/weight"].shape == (11008, 4096)
    assert flat["model/layers_0/mlp/down_proj/weight"].shape == (4096, 11008)
    assert flat["model/layers_0/input_layernorm/weight"].shape == (4096,)
    assert flat["model/norm/weight"].shape == (4096,)


def test_real_init_tiny_count_and_init_statistics(tiny_params):
    cfg = CONFIGS["tiny"]
    flat = flat_params(tiny_params)
    assert sum(int(v.size) for v in flat.values()) == count_parameters(cfg)
    for key, v in flat.items():
        assert v.dtype == jnp.float32, key
        if v.ndim == 1:
            assert np.all(np.asarray(v) == 1.0), key  # RMSNorm gains start at 1
        else:
            assert abs(float(jnp.std(v)) - 0.02) < 0.002, key
    for name in ("small",):
        c = CONFIGS[name]
        assert sum(int(np.prod(s.shape)) for s in jax.tree.leaves(
            jax.eval_shape(lambda c=c: init_params(c, 0)))) == count_parameters(c)


def test_hf_param_names_one_to_one():
    cfg = CONFIGS["xgen-7b"]
    names = hf_param_names(cfg)
    assert set(names) == set(flat_params(_shapes_7b()))
    assert len(names) == 9 * cfg.n_layers + 3 == len(set(names.values()))
    assert names["model/layers_0/self_attn/q_proj/weight"] == "model.layers.0.self_attn.q_proj.weight"
    assert names["model/layers_7/post_attention_layernorm/weight"] == "model.layers.7.post_attention_layernorm.weight"
    assert names["lm_head/weight"] == "lm_head.weight"
    hf_re = re.compile(r"^(lm_head\.weight|model\.(embed_tokens|norm)\.weight|model\.layers\.\d+\.("
                       r"input_layernorm|post_attention_layernorm|self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj"
                       r")\.weight)$")
    assert all(hf_re.match(v) for v in names.values())


def test_forward_shapes_and_dtypes(tiny_params):
    cfg = CONFIGS["tiny"]
    tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 16), 0, 50313, dtype=jnp.int32)
    logits = jax.jit(build_model(cfg).apply)(tiny_params, tokens)
    assert logits.shape == (2, 16, cfg.vocab_size) and logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits)))
    bf = jax.jit(build_model(cfg, "bfloat16").apply)(tiny_params, tokens)
    assert bf.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(bf - logits))) < 0.05  # bf16 operands, f32 accumulation
    assert float(jnp.max(jnp.abs(bf - logits))) > 0.0  # and the option does change the matmuls


def test_bad_inputs_raise(tiny_params):
    cfg = CONFIGS["tiny"]
    with pytest.raises(ValueError, match="max_positions"):
        build_model(cfg).apply(tiny_params, jnp.zeros((1, cfg.max_positions + 1), jnp.int32))
    with pytest.raises(ValueError, match="compute_dtype"):
        build_model(cfg, "float16")
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(hidden=100, n_heads=3)
    with pytest.raises(InputError, match="tiny"):
        get_config("nope")


def test_causal_mask_future_tokens_do_not_change_past_logits(tiny_params):
    cfg = CONFIGS["tiny"]
    apply = jax.jit(build_model(cfg).apply)
    tokens = np.asarray(jax.random.randint(jax.random.PRNGKey(2), (2, 24), 0, 50313), dtype=np.int32)
    changed = tokens.copy()
    t = 10
    changed[:, t] = (changed[:, t] + 1234) % 50313
    changed[:, -1] = (changed[:, -1] + 7) % 50313
    a, b = np.asarray(apply(tiny_params, tokens)), np.asarray(apply(tiny_params, changed))
    np.testing.assert_allclose(a[:, :t], b[:, :t], rtol=0, atol=1e-6)
    assert np.abs(a[:, t:] - b[:, t:]).max(axis=-1).min() > 1e-4  # every later position sees the change


def test_rope_rotate_half_matches_numpy_reference():
    rng = np.random.default_rng(0)
    b, h, t, d, theta = 2, 3, 7, 8, 10000.0
    x = rng.standard_normal((b, h, t, d)).astype(np.float32)
    cos, sin = rotary_cos_sin(jnp.arange(t), d, theta)
    got = np.asarray(apply_rotary(jnp.asarray(x), cos, sin))
    # direct reference: dims (i, i + d/2) form a pair rotated by pos * theta^(-2i/d)
    ref = np.empty_like(x)
    half = d // 2
    for pos in range(t):
        for i in range(half):
            ang = pos * theta ** (-2.0 * i / d)
            c, s = np.cos(ang), np.sin(ang)
            x1, x2 = x[:, :, pos, i], x[:, :, pos, i + half]
            ref[:, :, pos, i] = x1 * c - x2 * s
            ref[:, :, pos, i + half] = x2 * c + x1 * s
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    # position 0 is the identity; dot products depend only on the offset
    np.testing.assert_array_equal(got[:, :, 0], x[:, :, 0])
    q, k = rng.standard_normal(d).astype(np.float32), rng.standard_normal(d).astype(np.float32)

    def rot(v, p):
        c, s = rotary_cos_sin(jnp.array([p]), d, theta)
        return np.asarray(apply_rotary(jnp.asarray(v)[None, None, None], c, s))[0, 0, 0]

    assert abs(rot(q, 5) @ rot(k, 2) - rot(q, 13) @ rot(k, 10)) < 1e-4


def test_rms_norm_computes_in_float32():
    rng = np.random.default_rng(1)
    x32 = rng.standard_normal((3, 64)).astype(np.float32) * 5
    xbf = jnp.asarray(x32, dtype=jnp.bfloat16)
    w = rng.standard_normal(64).astype(np.float32)
    out = rms_norm(xbf, jnp.asarray(w), 1e-6)
    assert out.dtype == jnp.float32
    xu = np.asarray(xbf.astype(jnp.float32))  # the bf16 values, upcast
    ref = xu / np.sqrt(np.mean(xu.astype(np.float64) ** 2, -1, keepdims=True) + 1e-6) * w
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)
    # eps keeps a zero vector finite
    assert np.all(np.asarray(rms_norm(jnp.zeros((1, 8)), jnp.ones(8))) == 0)


def _numpy_llama(state: dict[str, np.ndarray], tokens: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """Independent float64 reference written from HF LlamaForCausalLM's formulas and state-dict names."""
    def norm(x, w):
        return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + cfg.rms_eps) * w

    def rot_half(x):
        h = x.shape[-1] // 2
        return np.concatenate([-x[..., h:], x[..., :h]], -1)

    b, t = tokens.shape
    nh, hd = cfg.n_heads, cfg.head_dim
    inv = 1.0 / cfg.rope_theta ** (np.arange(0, hd, 2) / hd)
    emb = np.concatenate([np.outer(np.arange(t), inv)] * 2, -1)
    cos, sin = np.cos(emb), np.sin(emb)
    x = state["model.embed_tokens.weight"][tokens]
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        h = norm(x, state[p + "input_layernorm.weight"])
        q, k, v = (h @ state[p + f"self_attn.{n}_proj.weight"].T for n in "qkv")
        q, k, v = (a.reshape(b, t, nh, hd).transpose(0, 2, 1, 3) for a in (q, k, v))
        q, k = q * cos + rot_half(q) * sin, k * cos + rot_half(k) * sin
        s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd)
        s = np.where(np.tril(np.ones((t, t), bool)), s, -np.inf)
        pr = np.exp(s - s.max(-1, keepdims=True))
        pr /= pr.sum(-1, keepdims=True)
        a = (pr @ v).transpose(0, 2, 1, 3).reshape(b, t, -1)
        x = x + a @ state[p + "self_attn.o_proj.weight"].T
        h = norm(x, state[p + "post_attention_layernorm.weight"])
        g, u = h @ state[p + "mlp.gate_proj.weight"].T, h @ state[p + "mlp.up_proj.weight"].T
        x = x + (g / (1 + np.exp(-g)) * u) @ state[p + "mlp.down_proj.weight"].T
    return norm(x, state["model.norm.weight"]) @ state["lm_head.weight"].T


@pytest.mark.slow  # > 7 s on 2 cores
def test_forward_matches_hf_formula_reference():
    cfg = MICRO
    params = init_params(cfg, 3)
    # perturb norm gains so they matter
    flat = {k: np.asarray(v, np.float64) for k, v in flat_params(params).items()}
    rng = np.random.default_rng(0)
    for k in flat:
        if flat[k].ndim == 1:
            flat[k] = flat[k] + 0.1 * rng.standard_normal(flat[k].shape)
        else:
            flat[k] = flat[k] * 10  # larger weights: attention patterns far from uniform
    params = unflat_params({k: jnp.asarray(v, jnp.float32) for k, v in flat.items()})
    state = {hf: flat[hk] for hk, hf in hf_param_names(cfg).items()}
    tokens = rng.integers(0, cfg.vocab_size, size=(2, 12)).astype(np.int32)
    got = np.asarray(build_model(cfg).apply(params, jnp.asarray(tokens)))
    ref = _numpy_llama(state, tokens, cfg)
    np.testing.assert_allclose(got, ref, rtol=2e-4, atol=2e-4)
