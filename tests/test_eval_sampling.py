"""The batched HumanEval sampler: nucleus draws equal to generate.sample_next's, stop sequences,
and greedy completions equal to xgen generate's."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hf_helpers import MICRO, perturbed_params

from xgen_data import tokenizer as xtok
from xgen_train.evaluate.generate import generate, sample_next
from xgen_train.evaluate.sampling import cut_at_stop, sample_completions, sample_nucleus


@pytest.mark.parametrize("temperature,top_p", [(0.2, 0.95), (0.8, 0.5), (1.0, 0.99), (0.5, 1.0), (3.0, 0.9)])
@pytest.mark.slow  # > 7 s on 2 cores
def test_nucleus_draws_equal_sample_next(temperature, top_p):
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.standard_normal((6, 2000)).astype(np.float32) * 3)  # T=3: nucleus past the top 256
    for i in range(5):
        key = jax.random.PRNGKey(i)
        a = sample_nucleus(logits, key, temperature, top_p, 1900)
        b = sample_next(logits, key, temperature, top_p, 1900, greedy=False)
        assert a.tolist() == b.tolist()
        assert max(a.tolist()) < 1900
    assert sample_nucleus(logits, key, 0.2, 0.9, greedy=True).tolist() == np.argmax(logits, -1).tolist()


def test_cut_at_stop():
    assert cut_at_stop("    return x\n\ndef g():", ("\ndef", "\n#")) == ("    return x\n", True)
    assert cut_at_stop("    return x", ("\ndef",)) == ("    return x", False)


@pytest.mark.slow  # > 7 s on 2 cores
def test_greedy_completions_equal_generate():
    params = jax.tree.map(jnp.asarray, perturbed_params(MICRO, seed=4))
    prompt = xtok.encode("def add(a, b):\n")
    want = generate(params, MICRO, prompt, 10, eos_id=None, vocab_limit=xtok.VOCAB_SIZE).tokens
    got = sample_completions(params, MICRO, prompt, 3, 10, batch_size=2, eos_id=None)
    assert [c.text for c in got] == [xtok.decode(want)] * 3 and all(c.stop == "length" for c in got)
    text = xtok.decode(want)
    stop = text[len(text) // 2:][:3]
    if stop.strip():
        cut = sample_completions(params, MICRO, prompt, 1, 10, eos_id=None, stops=(stop,), check_every=1)[0]
        assert cut.text == text[:text.index(stop)] and cut.stop == "stop"
    a = sample_completions(params, MICRO, prompt, 4, 8, temperature=0.8, top_p=0.95, seed=7, batch_size=2)
    b = sample_completions(params, MICRO, prompt, 4, 8, temperature=0.8, top_p=0.95, seed=7, batch_size=2)
    assert [c.text for c in a] == [c.text for c in b]  # a seed gives the same completions
