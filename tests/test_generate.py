"""Generation with a KV cache: cached == uncached, cached logits == full forward, sampling
rules, stopping, and the ``xgen generate`` command."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from click.testing import CliRunner
from hf_helpers import MICRO, make_run, perturbed_params

from cli.main import cli
from xgen_data import tokenizer as xtok
from xgen_train.evaluate.generate import forward_cached, generate, init_cache
from xgen_train.model.model import build_model

PROMPT = xtok.encode("The history of the Linux kernel begins in 1991, when")


@pytest.fixture(scope="module")
def params():
    return perturbed_params(MICRO, seed=2)


def test_cached_logits_equal_the_full_forward(params):
    """Prefill of a block and then one token at a time reproduce the full forward's logits at every position."""
    tokens = np.asarray([PROMPT + PROMPT[:5]], np.int32)  # [1, T]
    t = tokens.shape[1]
    full = np.asarray(build_model(MICRO).apply(params, jnp.asarray(tokens)))[0]
    cache = init_cache(MICRO, 1, 40)
    fwd = jax.jit(forward_cached, static_argnums=(1,))
    pre, cache = fwd(params, MICRO, jnp.asarray(tokens[:, :7]), 0, cache)
    steps = [np.asarray(pre)[0]]
    for i in range(7, t):
        logits, cache = fwd(params, MICRO, jnp.asarray(tokens[:, i:i + 1]), i, cache)
        steps.append(np.asarray(logits)[0])
    got = np.concatenate(steps)
    np.testing.assert_allclose(got, full, rtol=0, atol=1e-4)
    assert np.abs(full).max() > 1.0
    # the cache holds keys only where tokens were written
    k = np.asarray(cache["k"])
    assert np.any(k[:, :, :, t - 1] != 0) and np.all(k[:, :, :, t:] == 0)


@pytest.mark.slow  # > 6 s on 2 cores
def test_greedy_cached_equals_uncached(params):
    a = generate(params, MICRO, PROMPT, 30, eos_id=None, return_logits=True)
    b = generate(params, MICRO, PROMPT, 30, eos_id=None, return_logits=True, use_cache=False)
    assert a.tokens == b.tokens and len(a.tokens) == 30 and a.stop == "max_new_tokens"
    assert len(set(a.tokens)) > 3
    np.testing.assert_allclose(a.logits, b.logits, rtol=0, atol=1e-4)
    assert a.tokens == np.argmax(a.logits, axis=-1).tolist()


@pytest.mark.slow  # > 7 s on 2 cores
def test_sampling_is_seeded_and_cache_independent(params):
    kw = dict(temperature=0.9, top_p=0.95, eos_id=None)
    a = generate(params, MICRO, PROMPT, 30, seed=5, **kw)
    assert a.tokens == generate(params, MICRO, PROMPT, 30, seed=5, use_cache=False, **kw).tokens
    assert a.tokens == generate(params, MICRO, PROMPT, 30, seed=5, **kw).tokens
    assert a.tokens != generate(params, MICRO, PROMPT, 30, seed=6, **kw).tokens
    greedy = generate(params, MICRO, PROMPT, 30, eos_id=None).tokens
    assert a.tokens != greedy
    # a nucleus so small that only the most likely token remains is greedy decoding, whatever the seed
    assert generate(params, MICRO, PROMPT, 30, temperature=1.5, top_p=1e-6, seed=9, eos_id=None).tokens == greedy


def test_top_p_keeps_only_the_nucleus():
    from xgen_train.evaluate.generate import sample_next

    probs = np.array([[0.5, 0.3, 0.15, 0.05]])
    logits = jnp.asarray(np.log(probs), jnp.float32)
    seen = {int(sample_next(logits, jax.random.PRNGKey(i), 1.0, 0.75)[0]) for i in range(300)}
    assert seen == {0, 1}  # 0.5 < 0.75 needs the second token; 0.8 >= 0.75 stops there
    seen = {int(sample_next(logits, jax.random.PRNGKey(i), 1.0, 1.0)[0]) for i in range(300)}
    assert seen == {0, 1, 2, 3}
    limited = sample_next(jnp.asarray([[0.0, 5.0, 1.0]]), jax.random.PRNGKey(0), 0.0, 1.0, vocab_limit=1)
    assert int(limited[0]) == 0  # ids >= vocab_limit are never chosen, even when most likely


def test_stops_at_eos_and_at_max_positions(params):
    first = generate(params, MICRO, PROMPT, 30, eos_id=None).tokens
    res = generate(params, MICRO, PROMPT, 30, eos_id=first[1])
    assert res.tokens == first[:2] and res.stop == "eos"
    long_prompt = (PROMPT * 30)[: MICRO.max_positions - 3]
    res = generate(params, MICRO, long_prompt, 10, eos_id=None)
    assert len(res.tokens) == 3 and res.stop == "max_positions"


@pytest.mark.slow  # > 6 s on 2 cores
def test_vocab_limit_and_bad_arguments(params):
    res = generate(params, MICRO, PROMPT, 20, temperature=2.0, seed=1, vocab_limit=1000, eos_id=None)
    assert all(t < 1000 for t in res.tokens)
    for kwargs, msg in [(dict(prompt=[]), "prompt is empty"), (dict(top_p=0.0), "top_p"),
                        (dict(temperature=-1.0), "temperature"), (dict(max_new_tokens=0), "max_new_tokens"),
                        (dict(prompt=[0] * MICRO.max_positions), "at most 256 positions"),
                        (dict(prompt=[51200]), "prompt ids")]:
        args = dict(prompt=PROMPT, max_new_tokens=4) | kwargs
        with pytest.raises(ValueError, match=msg):
            generate(params, MICRO, args.pop("prompt"), args.pop("max_new_tokens"), **args)


def test_generate_cli(params, tmp_path):
    run = make_run(tmp_path / "run", MICRO, params)
    args = ["generate", str(run), "--prompt", "The history of", "--max-new-tokens", "30", "--format", "json"]
    a = CliRunner().invoke(cli, args)
    assert a.exit_code == 0, a.output
    out = json.loads(a.output)
    assert out["prompt_ids"] == xtok.encode("The history of") and len(out["new_ids"]) == 30
    assert out["stop"] == "max_new_tokens" and out["new_ids"] == generate(
        params, MICRO, out["prompt_ids"], 30, vocab_limit=xtok.VOCAB_SIZE).tokens
    assert all(t < xtok.VOCAB_SIZE for t in out["new_ids"])
    b = CliRunner().invoke(cli, args[:-2] + ["--temperature", "0.8", "--top-p", "0.9", "--seed", "3"])
    assert b.exit_code == 0 and b.output.startswith("The history of")
    c = CliRunner().invoke(cli, ["generate", str(tmp_path), "--prompt", "x"])
    assert c.exit_code == 3 and "neither a checkpoint directory nor a run directory" in c.output and "Traceback" not in c.output
