"""Precision policy (SPEC §3): every matmul of a lowered train step, forward and backward."""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xgen_train.loop.optimizer import OptimizerConfig, make_optimizer
from xgen_train.loop.step import StepOptions, init_monitor, make_train_step
from xgen_train.model.config import ModelConfig
from xgen_train.model.loss import make_loss_fn
from xgen_train.model.model import init_params
from xgen_train.model.numerics import NumericsOptions
from xgen_train.model.precision import PrecisionPolicy, as_policy, matmul, resolve_precision

MICRO = ModelConfig(vocab_size=512, hidden=64, intermediate=160, n_layers=2, n_heads=4, max_positions=128)
_TYPES = re.compile(r"tensor<(?:[0-9]+x)*(\w+)>")


def _dot_generals(numerics: NumericsOptions, accum_steps: int = 1) -> list[tuple[list[str], str]]:
    """``(operand/result element types, line)`` of every dot_general in the lowered StableHLO of a step."""
    opt = make_optimizer(OptimizerConfig(warmup_steps=1, total_steps=10))
    params = jax.eval_shape(lambda: init_params(MICRO, 0))
    opt_state = jax.eval_shape(opt.init, params)
    step = make_train_step(make_loss_fn(MICRO, numerics), opt, StepOptions(accum_steps=accum_steps))
    tokens = jax.ShapeDtypeStruct((2, 32), jnp.int32)
    text = jax.jit(step).lower(params, opt_state, init_monitor(StepOptions()), tokens).as_text()
    out = []
    for line in text.splitlines():
        if "stablehlo.dot_general" in line:
            sig = line.rsplit(" : ", 1)[1]
            out.append((_TYPES.findall(sig), line))
    return out


# forward: 7 per layer (q k v o gate up down) + 2 attention products, LM head 1; backward: two per product
N_DOTS = 3 * (2 * 9 + 1)


@pytest.mark.parametrize("extra", [dict(), dict(attention="chunked", attention_block=8, remat=True, loss_chunk=24),
                                   dict(loss_chunk=0)])
def test_bf16_step_every_dot_is_bf16_in_f32_out(extra):
    dots = _dot_generals(NumericsOptions(precision="bf16", **extra))
    assert len(dots) >= N_DOTS  # forward and backward are both there (chunked: recomputation adds more)
    for types, line in dots:
        assert types == ["bf16", "bf16", "f32"], line
        assert "HIGHEST" not in line


def test_f32_step_sets_highest_precision_everywhere():
    dots = _dot_generals(NumericsOptions(precision="f32"), accum_steps=2)
    assert len(dots) == N_DOTS
    for types, line in dots:
        assert types == ["f32", "f32", "f32"], line
        assert "precision = [HIGHEST, HIGHEST]" in line, line


def test_matmul_gradients_follow_policy():
    rng = np.random.default_rng(0)
    a, b, g = (jnp.asarray(rng.standard_normal(s), jnp.float32) for s in ((3, 5, 8), (3, 7, 8), (3, 5, 7)))
    spec = "bqd,bkd->bqk"
    r = lambda x: x.astype(jnp.bfloat16).astype(jnp.float32)  # noqa: E731
    hi = lambda s, x, y: jnp.einsum(s, x, y, precision="highest")  # noqa: E731

    @jax.jit
    def run(a, b, g):
        ref, vjp_ref = jax.vjp(lambda x, y: hi(spec, x, y), a, b)
        out, vjp = jax.vjp(lambda x, y: matmul(spec, x, y, "float32"), a, b)
        out16, vjp16 = jax.vjp(lambda x, y: matmul(spec, x, y, "bfloat16"), a, b)
        want16 = (hi(spec, r(a), r(b)), hi("bqk,bkd->bqd", r(g), r(b)), hi("bqk,bqd->bkd", r(g), r(a)))
        return (ref, *vjp_ref(g)), (out, *vjp(g)), (out16, *vjp16(g)), want16

    ref, got, got16, want16 = run(a, b, g)
    for x, y in zip(got, ref):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)
    # bf16: forward and both gradients are float32 products of bf16-rounded operands (cotangent included)
    for x, y in zip(got16, want16):
        assert x.dtype == jnp.float32
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="explicit"):
        matmul("...i,oi->...o", a, b, "float32")


def test_resolve_precision():
    assert resolve_precision("auto", "cpu").name == "float32"
    assert resolve_precision("auto", "gpu").name == resolve_precision("auto", "tpu").name == "bfloat16"
    assert resolve_precision("bf16", "cpu").name == "bfloat16" and resolve_precision("f32", "tpu").name == "float32"
    assert as_policy("bfloat16") == PrecisionPolicy("bfloat16") and as_policy(jnp.float32).precision.name == "HIGHEST"
    with pytest.raises(ValueError, match="unknown precision"):
        resolve_precision("fp8")
    with pytest.raises(ValueError, match="compute_dtype"):
        as_policy("float16")
    assert NumericsOptions().resolved("gpu").attention == "dot_product"
    assert NumericsOptions().resolved("cpu").to_dict()["precision"] == "float32"
