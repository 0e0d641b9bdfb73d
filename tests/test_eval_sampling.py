"""The batched HumanEval sampler: nucleus draws against a full sort's nucleus, stop sequences,
and greedy completions equal to xgen generate's."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hf_helpers import MICRO, perturbed_params

from xgen_data import tokenizer as xtok
from xgen_train.evaluate.generate import generate, sample_next
from xgen_train.evaluate.sampling import cut_at_stop, sample_completions


def _reference_nucleus(row: np.ndarray, temperature: float, top_p: float, limit: int) -> tuple[set, np.ndarray]:
    """The nucleus by a full sort (the sorted cumulative rule) and its renormalised probabilities [V]."""
    z = np.where(np.arange(row.size) < limit, row.astype(np.float64) / temperature, -np.inf)
    p = np.exp(z - z.max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    before = np.cumsum(p[order]) - p[order]
    kept = order[(before < top_p) | (top_p >= 1.0)]
    q = np.zeros_like(p)
    q[kept] = p[kept] / p[kept].sum()
    return set(kept.tolist()), q


@pytest.mark.parametrize("temperature,top_p", [(0.2, 0.95), (0.8, 0.5), (3.0, 0.9), (0.5, 1.0), (0.8, 0.2),
                                               (0.2, 0.1), (100.0, 0.2)])
def test_nucleus_draws_follow_the_sorted_rule(temperature, top_p):
    """Every draw lies in the nucleus a full sort gives, and the draw frequencies match its renormalised
    probabilities. top_p >= REJECTION_FROM draws by rejection over the whole vocabulary; (0.8, 0.2) and (0.2, 0.1)
    from the top-K candidates; (100.0, 0.2) tries the top K, which do not hold the nearly flat nucleus, then
    rejection."""
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.standard_normal((3, 2000)).astype(np.float32) * 3)
    n = 2000
    draw = jax.jit(jax.vmap(lambda k: sample_next(logits, k, temperature, top_p, 1900, greedy=False)))
    got = np.asarray(draw(jax.random.split(jax.random.PRNGKey(0), n)))  # [n, 3]
    for r in range(3):
        nucleus, q = _reference_nucleus(np.asarray(logits[r]), temperature, top_p, 1900)
        assert set(got[:, r].tolist()) <= nucleus
        freq = np.bincount(got[:, r], minlength=q.size) / n
        order = np.argsort(-q, kind="stable")  # 10 bins by where a token starts in the cumulative mass
        bins = np.minimum(((np.cumsum(q[order]) - q[order]) * 10).astype(int), 9)
        bins_f, bins_q = np.bincount(bins, freq[order]), np.bincount(bins, q[order])
        assert np.all(np.abs(bins_f - bins_q) <= 5 * np.sqrt(np.clip(bins_q * (1 - bins_q), 0, None) / n) + 1e-6)
    greedy = sample_next(logits, jax.random.PRNGKey(0), 0.2, 0.9, greedy=True)
    assert greedy.tolist() == np.argmax(logits, -1).tolist()


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


_EDGE_ROWS = """
import jax, jax.numpy as jnp, numpy as np
from xgen_train.evaluate.generate import sample_next
key = jax.random.PRNGKey(0)
lg = jax.random.normal(key, (4, 600)) * 8
lg = lg.at[1].set(-jnp.inf).at[2, 7].set(jnp.nan).at[3, 550].set(jnp.nan)  # all -inf; NaN in and past the limit
out = []
for t, p in [(1.0, 0.9), (1.0, 1.0), (1e-38, 0.9), (1e-38, 1.0), (1e-45, 0.5), (1e30, 0.5)]:
    out.append(np.asarray(sample_next(lg, key, t, p, 500)).tolist())
print(out)
"""


def test_nucleus_draw_terminates_on_nan_inf_rows_and_tiny_temperatures():
    """A NaN row or a row with every id at -inf gets greedy's id (argmax) instead of an endless rejection loop;
    a temperature so small that logits / T overflows float32 (or is flushed to 0) samples the argmax set; every
    id stays below the vocabulary limit. Run in a child process so a regression fails instead of hanging."""
    import ast
    import os
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-c", _EDGE_ROWS], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = ast.literal_eval(proc.stdout.strip().splitlines()[-1])
    logits = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (4, 600)) * 8)
    best = int(np.argmax(logits[0, :500]))
    for ids in rows:
        assert all(0 <= i < 500 for i in ids)
        assert ids[1] == 0 and ids[2] == 7  # argmax of an all -inf row; the first NaN within the limit
    for ids in rows[2:5]:  # T -> 0: the draw is the argmax
        assert ids[0] == best and ids[3] == int(np.argmax(logits[3, :500]))
