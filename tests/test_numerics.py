"""Numerics of the train step: chunked loss and attention equal the plain ones, z-loss, remat,
gradient accumulation, document masking, 8K memory of a 7B layer, and the `xgen train` flags."""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # conftest_train
from conftest import SAMPLE  # noqa: E402
from conftest_train import EOS_ID, build_shards  # noqa: E402

from xgen_data import tokenizer  # noqa: E402
from xgen_train.loop.optimizer import OptimizerConfig, make_optimizer  # noqa: E402
from xgen_train.loop.step import StepOptions, accumulated_value_and_grad, init_monitor, make_train_step  # noqa: E402
from xgen_train.model.attention import attention, segments_from_eos  # noqa: E402
from xgen_train.model.config import ModelConfig, get_config  # noqa: E402
from xgen_train.model.loss import chunked_next_token_loss, make_loss_fn, next_token_loss  # noqa: E402
from xgen_train.model.model import build_model, init_params, llama_hidden  # noqa: E402
from xgen_train.model.numerics import NumericsOptions  # noqa: E402

MICRO = ModelConfig(vocab_size=51200, hidden=64, intermediate=160, n_layers=1, n_heads=4, max_positions=256)


def _texts(n: int) -> list[list[int]]:
    """Token ids of the first ``n`` documents of the shared nl sample (real text)."""
    docs = []
    with open(Path(SAMPLE) / "nl.jsonl", encoding="utf-8") as fh:
        for line in fh:
            docs.append(tokenizer.encode(json.loads(line)["text"]))
            if len(docs) == n:
                break
    return docs


def _packed(batch: int, length: int) -> np.ndarray:
    """``[batch, length]`` int32: real documents joined with EOS, cut into rows (like the packer)."""
    stream = []
    for d in _texts(200):
        stream += d + [EOS_ID]
        if len(stream) >= batch * length:
            break
    return np.asarray(stream[:batch * length], np.int32).reshape(batch, length)


@pytest.fixture(scope="module")
def micro_params():
    """MICRO parameters drawn with numpy (N(0, 0.02) matrices, unit norms; fast, same tree as init_params)."""
    rng = np.random.default_rng(3)
    shapes = jax.eval_shape(lambda: init_params(MICRO, 0))
    return jax.tree.map(lambda s: jnp.asarray(np.ones(s.shape) if len(s.shape) == 1
                                              else rng.standard_normal(s.shape) * 0.02, jnp.float32), shapes)


def _rand(shape, seed, scale=1.0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape) * scale, jnp.float32)


def test_chunked_loss_equals_full_logits_values_and_gradients():
    b, length, d, v = 2, 37, 32, 300
    h, w = _rand((b, length, d), 0), _rand((v, d), 1, 0.2)
    tokens = jnp.asarray(np.random.default_rng(2).integers(0, v, (b, length)), jnp.int32)

    @jax.jit
    def both(h, w):
        ref = jax.value_and_grad(lambda h, w: next_token_loss(jnp.einsum("bld,vd->blv", h, w, precision="highest"),
                                                              tokens, z_loss=1e-2), (0, 1))(h, w)
        got = [jax.value_and_grad(lambda h, w, c=c: chunked_next_token_loss(h, w, tokens, c, 1e-2), (0, 1))(h, w)
               for c in (0, 16, 29, 5000)]  # one chunk, several (74 rows: padded), chunk > rows
        return ref, got

    (ref, (gh, gw)), got = both(h, w)
    for loss, (dh, dw) in got:
        np.testing.assert_allclose(loss, ref, rtol=1e-6)
        np.testing.assert_allclose(dh, gh, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(dw, gw, rtol=1e-5, atol=1e-7)


@pytest.mark.slow  # > 6 s on 2 cores
def test_z_loss_adds_weighted_mean_logsumexp_squared(micro_params):
    tokens = jnp.asarray(_packed(2, 64))
    logits = jax.jit(build_model(MICRO).apply)(micro_params, tokens)
    z_ref = float(jnp.mean(jax.nn.logsumexp(logits[:, :-1], axis=-1) ** 2))
    plain, _ = jax.jit(make_loss_fn(MICRO, NumericsOptions()))(micro_params, tokens)
    with_z, aux = jax.jit(make_loss_fn(MICRO, NumericsOptions(z_loss=1e-3)))(micro_params, tokens)
    assert float(plain) == pytest.approx(float(next_token_loss(logits, tokens)), rel=1e-6)
    assert float(aux["ce"]) == pytest.approx(float(plain), rel=1e-6)
    assert float(aux["z"]) == pytest.approx(z_ref, rel=1e-5)
    assert float(with_z) - float(plain) == pytest.approx(1e-3 * z_ref, rel=1e-3)


@pytest.mark.parametrize("segments", [False, True])
@pytest.mark.slow  # > 7 s on 2 cores
def test_chunked_and_dot_product_attention_equal_plain(segments):
    b, h, t, hd = 2, 3, 45, 8
    q, k, v, g = (_rand((b, h, t, hd), s) for s in range(4))
    seg = None
    if segments:  # documents ending at EOS positions 10 and 30 in row 0, 22 in row 1
        tok = np.zeros((b, t), np.int32)
        tok[0, [10, 30]] = tok[1, 22] = EOS_ID
        seg = segments_from_eos(jnp.asarray(tok), EOS_ID)[0]

    @jax.jit
    def run(q, k, v):
        outs = []
        for impl, block in (("xla", 0), ("chunked", 16), ("chunked", 7), ("dot_product", 0)):
            out, vjp = jax.vjp(lambda q, k, v, impl=impl, block=block: attention(q, k, v, impl, "float32", seg, block), q, k, v)
            outs.append((out, *vjp(g)))
        return outs

    ref, *others = run(q, k, v)
    for got in others:
        for x, y in zip(got, ref):
            np.testing.assert_allclose(x, y, rtol=2e-5, atol=2e-5)


@pytest.mark.slow  # > 7 s on 2 cores
def test_model_options_keep_loss_and_gradients(micro_params):
    """Remat, chunked attention, chunked loss and dot_product attention: same loss and gradients as plain."""
    tokens = jnp.asarray(_packed(2, 64))
    grad = lambda num: jax.jit(jax.value_and_grad(make_loss_fn(MICRO, num), has_aux=True))(micro_params, tokens)  # noqa: E731
    (ref, _), gref = grad(NumericsOptions(loss_chunk=0, attention="xla"))
    for num in (NumericsOptions(remat=True, loss_chunk=50, attention="chunked", attention_block=16),):
        (loss, _), g = grad(num)
        assert float(loss) == pytest.approx(float(ref), rel=1e-6)
        for x, y in zip(jax.tree.leaves(g), jax.tree.leaves(gref)):
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-7)
    (loss16, _), _ = grad(NumericsOptions(precision="bf16"))
    assert abs(float(loss16) - float(ref)) < 1e-2 and float(loss16) != float(ref)


@pytest.mark.slow  # > 7 s on 2 cores
def test_gradient_accumulation_equals_one_shot(micro_params):
    tokens = jnp.asarray(_packed(8, 32))
    loss_fn = make_loss_fn(MICRO, NumericsOptions(z_loss=1e-4))
    (l1, aux1), g1 = jax.jit(accumulated_value_and_grad(loss_fn, 1))(micro_params, tokens)
    (l4, aux4), g4 = jax.jit(accumulated_value_and_grad(loss_fn, 4))(micro_params, tokens)
    assert float(l4) == pytest.approx(float(l1), rel=1e-6)
    assert float(aux4["ce"]) == pytest.approx(float(aux1["ce"]), rel=1e-6)
    for x, y in zip(jax.tree.leaves(g4), jax.tree.leaves(g1)):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-8)
    # the whole step: same metrics (and the update uses the mean gradient)
    opt = make_optimizer(OptimizerConfig(peak_lr=1e-2, warmup_steps=0, total_steps=10))
    opts = StepOptions(accum_steps=4)
    _, _, _, m = jax.jit(make_train_step(loss_fn, opt, opts))(micro_params, opt.init(micro_params),
                                                              init_monitor(opts), tokens)
    assert float(m["loss"]) == pytest.approx(float(aux1["ce"]), rel=1e-6)
    assert float(m["objective"]) == pytest.approx(float(l1), rel=1e-6)
    assert float(m["grad_norm"]) == pytest.approx(float(jnp.sqrt(sum(jnp.sum(g ** 2) for g in jax.tree.leaves(g1)))),
                                                  rel=1e-5)
    with pytest.raises(ValueError, match="accum_steps=3"):
        jax.eval_shape(accumulated_value_and_grad(loss_fn, 3), micro_params, tokens)


def test_segments_from_eos():
    tok = jnp.asarray([[5, EOS_ID, 7, 8, EOS_ID, EOS_ID, 9]])
    seg, pos = segments_from_eos(tok, EOS_ID)
    assert seg.tolist() == [[0, 0, 1, 1, 1, 2, 3]]
    assert pos.tolist() == [[0, 1, 0, 1, 2, 0, 0]]


@pytest.mark.slow  # > 6 s on 2 cores
def test_document_masking(micro_params):
    docs = [d[:30] for d in _texts(2)]  # two real documents (their first 30 tokens), no EOS inside
    assert all(EOS_ID not in d for d in docs)
    one = jnp.asarray([docs[0][:40]], jnp.int32)  # one document, no EOS inside
    two = jnp.asarray([docs[0] + [EOS_ID] + docs[1]], jnp.int32)
    on = make_loss_fn(MICRO, NumericsOptions(doc_mask=True, eos_id=EOS_ID))
    off = make_loss_fn(MICRO, NumericsOptions())
    on, off = jax.jit(on), jax.jit(off)
    assert float(on(micro_params, one)[0]) == float(off(micro_params, one)[0])
    assert float(on(micro_params, two)[0]) != pytest.approx(float(off(micro_params, two)[0]), rel=1e-4)

    def hidden(tokens, doc_mask):
        def fwd(tokens):
            seg = pos = None
            if doc_mask:
                seg, pos = segments_from_eos(tokens, EOS_ID)
            return llama_hidden(tokens, MICRO, positions=pos, segment_ids=seg)
        import haiku as hk
        return jax.jit(hk.without_apply_rng(hk.transform(fwd)).apply)(micro_params, tokens)

    # with the mask, the second document reads exactly as if it stood alone (positions restart at 0)
    packed = hidden(two, True)[0, len(docs[0]) + 1:]
    alone = hidden(jnp.asarray([docs[1]], jnp.int32), False)[0]
    np.testing.assert_allclose(packed, alone, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="eos_id"):
        make_loss_fn(MICRO, NumericsOptions(doc_mask=True))


@pytest.mark.slow  # > 7 s on 2 cores
def test_8k_step_of_a_7b_layer_fits_16gb():
    """Peak memory of one update for ONE XGen-7B decoder layer + embedding + LM head + AdamW state, one
    8,192-token sequence (data parallel: one sequence per chip, parameters replicated), bf16 + chunked
    attention + chunked loss + remat, from XLA's compiled memory analysis (abstract shapes, nothing allocated).
    Peak = arguments + outputs - donated aliases + temporaries."""
    cfg = dataclasses.replace(get_config("xgen-7b"), n_layers=1)
    opt = make_optimizer(OptimizerConfig(warmup_steps=1, total_steps=10))
    params = jax.eval_shape(lambda: init_params(cfg, 0))
    opt_state = jax.eval_shape(opt.init, params)
    monitor = jax.eval_shape(lambda: init_monitor(StepOptions()))
    num = NumericsOptions(precision="bf16", attention="chunked", attention_block=512, loss_chunk=2048, remat=True)
    step = make_train_step(make_loss_fn(cfg, num), opt, StepOptions())
    tokens = jax.ShapeDtypeStruct((1, 8192), jnp.int32)
    mem = jax.jit(step, donate_argnums=(0, 1, 2)).lower(params, opt_state, monitor, tokens).compile().memory_analysis()
    peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
            + mem.temp_size_in_bytes)
    state = 3 * 4 * (2 * 51200 * 4096 + 4 * 4096 ** 2 + 3 * 4096 * 11008 + 3 * 4096)  # params + Adam mu, nu
    assert mem.argument_size_in_bytes >= state  # the state is really there
    assert peak < 16 * 2 ** 30, f"peak {peak / 2 ** 30:.2f} GiB"


@pytest.mark.slow
def test_cli_numerics_flags_recorded_and_resume_refuses_change(tmp_path):
    from click.testing import CliRunner

    from cli.train_cmd import train as train_cmd

    shards = build_shards(tmp_path / "s64", seq_len=64, n_files=1, max_tokens=12_000)
    out = tmp_path / "run"
    args = ["--shards", str(shards), "--out", str(out), "--config", "tiny", "--batch-size", "4", "--lr", "3e-3",
            "--warmup", "1", "--quiet", "--steps", "2", "--precision", "bf16", "--loss-chunk", "96",
            "--attention", "chunked", "--attention-block", "32", "--remat", "--z-loss", "1e-4", "--doc-mask",
            "--accum-steps", "2", "--skip-spikes"]
    res = CliRunner().invoke(train_cmd, args)
    assert res.exit_code == 0, res.output
    run = json.loads((out / "run.json").read_text())
    assert run["compute_dtype"] == "bfloat16"
    assert run["numerics"] == {"attention": "chunked", "attention_block": 32, "loss_chunk": 96, "z_loss": 1e-4,
                               "remat": True, "doc_mask": True, "eos_id": EOS_ID, "accum_steps": 2,
                               "skip_spikes": True}
    losses = [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert len(losses) == 2 and all(np.isfinite(losses)) and 9 < losses[0] < 12  # ~ln(51200) at init
    res = CliRunner().invoke(train_cmd, [a if a != "1e-4" else "1e-3" for a in args] + ["--resume"])
    assert res.exit_code == 2 and "numerics.z_loss: 0.0001 -> 0.001" in res.output, res.output
    res = CliRunner().invoke(train_cmd, [a if a != "bf16" else "f32" for a in args] + ["--resume"])
    assert res.exit_code == 2 and "compute_dtype: 'bfloat16' -> 'float32'" in res.output, res.output
