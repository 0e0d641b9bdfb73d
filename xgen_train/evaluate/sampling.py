"""Batched sampling with stop sequences: ``n`` completions of one prompt, decoded together with the KV cache.

The prompt is prefilled once (batch of one) and its cache copied to every row; each decode step then runs
:func:`xgen_train.evaluate.generate.forward_cached` on ``[B, 1]`` tokens and draws the next token of every row
with :func:`xgen_train.evaluate.generate.sample_next` (greedy at temperature 0, else nucleus sampling). The
cache length is rounded up to a power of two and the batch is fixed, so a model compiles one prefill and one
decode program per (batch, length bucket), whatever the prompt or the sampling settings.

A row is finished when it emits EOS (50256, SPEC §1) or its text contains a stop sequence (SPEC §6 gives
HumanEval's: ``\\ndef``, ``\\nclass``, ``\\nif``, ``\\nprint``, ``\\n#``, the Codex paper's); the loop ends when
every row is finished or ``max_new_tokens`` is reached. Each completion is cut before its first stop sequence
(the stop text is not part of the completion) and before EOS.

Randomness: the draw at decode step ``i`` of batch ``b`` uses ``fold_in(fold_in(PRNGKey(seed), b), i)``, so a
seed (and batch size) gives the same completions on every run.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from xgen_data import tokenizer as xtok
from xgen_data.errors import InputError
from xgen_train.evaluate.generate import _bucket, forward_cached, init_cache, sample_next
from xgen_train.model.config import ModelConfig

__all__ = ["HUMANEVAL_STOP", "Completion", "cut_at_stop", "sample_completions"]

#: SPEC §6 / Codex paper stop sequences for HumanEval completions.
HUMANEVAL_STOP = ("\ndef", "\nclass", "\nif", "\nprint", "\n#")

@dataclass
class Completion:
    """One sampled completion: ``text`` (cut before the first stop sequence / EOS), ``n_tokens`` decoded
    for its row (the batch runs until its last row stops, so this counts the work done, not the text's
    length), ``stop``: ``"stop"``, ``"eos"`` or ``"length"``."""

    text: str
    n_tokens: int
    stop: str


def cut_at_stop(text: str, stops) -> tuple[str, bool]:
    """``text`` cut before the earliest occurrence of any string in ``stops``; and whether one occurred."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


@functools.lru_cache(maxsize=16)
def _programs(cfg: ModelConfig, compute_dtype: str, greedy: bool):
    def prefill(params, tokens, last, size):
        cache = init_cache(cfg, 1, size)
        logits, cache = forward_cached(params, cfg, tokens, jnp.int32(0), cache, compute_dtype)
        return jax.lax.dynamic_index_in_dim(logits, last, axis=1, keepdims=False), cache

    def draw(row, cache, batch, key, temperature, top_p, vocab_limit):
        rows = jnp.broadcast_to(row, (batch, row.shape[-1]))
        cache = jax.tree.map(lambda c: jnp.repeat(c, batch, axis=1), cache)
        return sample_next(rows, key, temperature, top_p, vocab_limit, greedy), cache

    def step(params, cache, tokens, start, key, temperature, top_p, vocab_limit):
        logits, cache = forward_cached(params, cfg, tokens[:, None], start, cache, compute_dtype)
        return sample_next(logits[:, 0], key, temperature, top_p, vocab_limit, greedy), cache

    return (jax.jit(prefill, static_argnums=(3,)), jax.jit(draw, static_argnums=(2,)),
            jax.jit(step, donate_argnums=(1,)))


def _finish(ids: list[int], stops, eos_id: int | None) -> Completion:
    if eos_id is not None and eos_id in ids:
        body, ended = ids[:ids.index(eos_id)], True
    else:
        body, ended = ids, False
    text, stopped = cut_at_stop(xtok.decode(body), stops)
    if stopped:
        return Completion(text, len(ids), "stop")
    return Completion(text, len(ids), "eos" if ended else "length")


def sample_completions(params, cfg: ModelConfig, prompt: list[int], n: int, max_new_tokens: int, *,
                       temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, batch_size: int = 32,
                       stops=(), eos_id: int | None = xtok.EOS_ID, vocab_limit: int | None = xtok.VOCAB_SIZE,
                       compute_dtype: str = "float32", check_every: int = 4) -> list[Completion]:
    """``n`` completions of ``prompt`` (token ids), ``batch_size`` rows decoded at a time.

    Args:
        params, cfg: the model (Haiku layout, :mod:`xgen_train.model.model`); params already device arrays
            or numpy.
        prompt: token ids, ``1 <= len(prompt) < cfg.max_positions``.
        n: completions wanted (>= 1); ``max_new_tokens``: at most this many tokens each (fewer when the
            prompt plus them would pass ``cfg.max_positions``).
        temperature, top_p: 0 = greedy; else nucleus sampling (see :func:`xgen_train.evaluate.generate.sample_next`).
        stops: stop strings; a row stops once its decoded text holds one (checked every ``check_every``
            tokens, so up to ``check_every - 1`` extra tokens may be generated and then cut off).
    Returns:
        ``n`` :class:`Completion` in a fixed order for a given seed.
    Raises:
        ValueError: empty or too long prompt, ``n < 1``, ``max_new_tokens < 1``, bad temperature / top_p.
    """
    if not prompt or len(prompt) >= cfg.max_positions:
        raise InputError(f"prompt must have 1 to {cfg.max_positions - 1} tokens, got {len(prompt)}")
    if n < 1 or max_new_tokens < 1:
        raise InputError(f"need n >= 1 and max_new_tokens >= 1, got n={n}, max_new_tokens={max_new_tokens}")
    if not (temperature >= 0 and math.isfinite(temperature)) or not 0 < top_p <= 1:
        raise InputError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    greedy = temperature == 0
    prefill, draw, step = _programs(cfg, str(jnp.dtype(compute_dtype)), greedy)
    n0 = len(prompt)
    budget = min(cfg.max_positions - n0, max_new_tokens)
    size = _bucket(n0 + budget, cfg.max_positions)
    padded = np.zeros((1, min(size, _bucket(n0, size))), np.int32)
    padded[0, :n0] = prompt
    knobs = (jnp.float32(temperature or 1.0), jnp.float32(top_p),
             jnp.int32(cfg.vocab_size if vocab_limit is None else vocab_limit))
    row, cache0 = prefill(params, jnp.asarray(padded), jnp.int32(n0 - 1), size)
    batch = min(batch_size, n)
    out: list[Completion] = []
    base = jax.random.PRNGKey(seed)
    for b, first in enumerate(range(0, n, batch)):
        key = jax.random.fold_in(base, b)
        tok, cache = draw(row, cache0, batch, jax.random.fold_in(key, 0), *knobs)
        ids = np.zeros((batch, budget), np.int64)
        done = np.zeros(batch, bool)
        used = 0
        for i in range(budget):
            t = np.asarray(tok)
            ids[:, i] = t
            used = i + 1
            if eos_id is not None:
                done |= t == eos_id
            if stops and (used % check_every == 0 or used == budget):
                for r in np.flatnonzero(~done):
                    done[r] = cut_at_stop(xtok.decode(_strip_eos(ids[r, :used], eos_id)), stops)[1]
            if done.all() or used == budget:
                break
            tok, cache = step(params, cache, tok, jnp.int32(n0 + i), jax.random.fold_in(key, i + 1), *knobs)
        for r in range(min(batch, n - first)):
            out.append(_finish(ids[r, :used].tolist(), stops, eos_id))
    return out


def _strip_eos(ids: np.ndarray, eos_id: int | None) -> list[int]:
    ids = ids.tolist()
    return ids[:ids.index(eos_id)] if eos_id is not None and eos_id in ids else ids
