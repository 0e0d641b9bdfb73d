"""Text generation with a key/value cache: prefill the prompt once, then one jit'ed decode step per token.

The cached forward (:func:`forward_cached`) is the LLaMA forward of :mod:`xgen_train.model.model` (SPEC §3;
its ``cache`` keyword) for a block of ``T`` new tokens at positions ``start .. start+T-1``: it writes their
rotated keys and values into a fixed-size cache ``[n_layers, B, n_heads, S, head_dim]`` and attends to cache
slots ``j <= position`` (later slots are masked with the same ``finfo.min`` as the full forward, so they
contribute exactly zero). Prefill is one
call with the whole prompt; decoding is one call per token with ``T = 1``. The cache size ``S`` (the prompt
plus the new tokens, rounded up to a power of two, at most ``max_positions``) is fixed for a generation, and
temperature, top-p and the vocabulary limit are traced values, so a model compiles one prefill and one
decode program per size bucket, whatever the sampling settings.

Sampling (:func:`sample_next`): greedy (argmax) when ``temperature == 0``; otherwise softmax of
``logits / temperature`` restricted to the smallest set of most likely tokens whose probability reaches
``top_p`` (nucleus sampling, Holtzman et al. 2019; found with ``lax.top_k``, no sort of the vocabulary), drawn with ``jax.random`` from ``fold_in(PRNGKey(seed),
i)`` for the ``i``-th new token, so a seed gives the same text on every run. Generation stops after EOS
(50256, SPEC §1), after ``max_new_tokens``, or when the sequence reaches ``max_positions``.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from xgen_data.errors import InputError
from xgen_train.model.config import ModelConfig
from xgen_train.model.model import build_model

__all__ = ["Generation", "forward_cached", "generate", "init_cache", "sample_next"]

EOS_ID = 50256

#: Candidates of the top-K nucleus path of :func:`sample_next`.
TOP_K = 256
#: From this ``top_p`` on, :func:`sample_next` draws by rejection straight away: a candidate drawn from the
#: whole distribution lies in the nucleus with probability at least ``top_p``, so few rounds run.
REJECTION_FROM = 0.25


def init_cache(cfg: ModelConfig, batch: int, length: int) -> dict[str, jax.Array]:
    """Empty key/value cache: ``{"k", "v"}`` float32 ``[n_layers, batch, n_heads, length, head_dim]``."""
    shape = (cfg.n_layers, batch, cfg.n_heads, length, cfg.head_dim)
    return {"k": jnp.zeros(shape, jnp.float32), "v": jnp.zeros(shape, jnp.float32)}


def forward_cached(params, cfg: ModelConfig, tokens: jax.Array, start, cache: dict, compute_dtype="float32"):
    """Logits of ``tokens`` placed at positions ``start ..``, reading and extending ``cache``.

    Args:
        params: Haiku params ``{module: {name: array}}`` of :func:`xgen_train.model.model.build_model`.
        tokens: int ``[B, T]``; ``start``: int scalar (may be traced), ``start + T <= S``.
        cache: from :func:`init_cache` (or a previous call); slots ``< start`` must hold the earlier tokens.
    Returns:
        ``(logits, cache)``: float32 ``[B, T, vocab_size]`` (equal, up to float rounding, to the full
        forward's logits at those positions) and the cache with slots ``start .. start+T-1`` written.
    """
    return build_model(cfg, compute_dtype).apply(params, tokens, cache=cache, cache_start=start)


def sample_next(logits: jax.Array, key: jax.Array, temperature, top_p, vocab_limit=None,
                greedy: bool | None = None, per_round: int = 4) -> jax.Array:
    """Next token ids from float32 ``logits [B, V]``: argmax when greedy, else nucleus sampling.

    The nucleus (Holtzman et al. 2019) is the most likely tokens up to and including the first at which the
    cumulative probability of ``softmax(logits / temperature)``, in descending order, reaches ``top_p``: token
    ``j`` is kept when the mass of the strictly more likely tokens is below ``top_p`` (the most likely token is
    always kept). No full sort of the vocabulary (XLA's CPU sort of ``[B, 51200]`` costs about a second):

    - by rejection over the whole vocabulary when ``top_p >=`` :data:`REJECTION_FROM` (HumanEval's 0.95
      among them): ``per_round`` candidates per row are drawn from the whole distribution (inverse CDF, one
      uniform each) and the first whose strictly more likely tokens hold less than ``top_p`` of the mass is
      taken (each is accepted with probability at least ``top_p``);
    - below it, when every row's top :data:`TOP_K` tokens hold ``top_p`` of the mass, the rule runs on
      ``lax.top_k`` and ``jax.random.categorical`` draws among the kept candidates; otherwise by rejection.

    A row with no finite maximum (a NaN, or every id at -inf) gets its argmax, as greedy decoding would; a
    temperature small enough to overflow ``logits / temperature`` draws among the most likely ids.

    Both draw from the same distribution; which one a batch takes depends only on ``logits`` and ``top_p``, so
    a key gives the same tokens on every run. Near-ties at the nucleus boundary may fall differently from an exact
    sorted cumulative sum (float rounding).

    Args:
        logits: float32 ``[B, V]``.
        key: ``jax.random`` key (unused when greedy).
        temperature: > 0 divides the logits (may be traced); ``top_p``: nucleus mass in ``(0, 1]`` (may be
            traced; 1 samples from the whole distribution).
        vocab_limit: ids ``>= vocab_limit`` are never chosen (the padding rows 50313..51199 of SPEC §1);
            None: no limit. May be traced.
        greedy: static switch; None means ``temperature == 0`` (then ``temperature`` must be a Python number).
        per_round: candidates per row and round of the whole-vocabulary path.
    Returns:
        int32 ``[B]``.
    """
    if greedy is None:
        greedy = temperature == 0
    if vocab_limit is not None:
        logits = jnp.where(jnp.arange(logits.shape[-1]) < vocab_limit, logits, -jnp.inf)
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return _nucleus_draw(logits, key, temperature, top_p, per_round)


@functools.partial(jax.jit, static_argnames="per_round")  # jit'ed so eager callers do not retrace the cond per call
def _nucleus_draw(logits: jax.Array, key: jax.Array, temperature, top_p, per_round: int) -> jax.Array:
    """:func:`sample_next`'s nucleus draw (not greedy): int32 ``[B]``. A row with no finite maximum (a NaN, or
    every id at -inf) gets greedy's id, its argmax, so the rejection loop always ends."""
    vmax = jnp.max(logits, axis=-1, keepdims=True)
    bad = ~(vmax > -jnp.inf)  # [B, 1]: NaN or every id -inf
    safe = jnp.where(bad, jnp.where(jnp.arange(logits.shape[-1]) == 0, 0.0, -jnp.inf), logits)
    vmax = jnp.max(safe, axis=-1, keepdims=True)
    # logits - max <= 0 and the max maps to 0: no temperature (even one float32 rounds to 0) makes +inf or NaN
    scaled = jnp.where(safe == vmax, 0.0, (safe - vmax) / temperature)
    return jnp.where(bad[:, 0], jnp.argmax(logits, axis=-1), _draw_scaled(scaled, key, top_p, per_round))


def _draw_scaled(scaled: jax.Array, key: jax.Array, top_p, per_round: int) -> jax.Array:
    """The nucleus draw from ``scaled`` (float32 ``[B, V]``, each row's maximum 0): int32 ``[B]``. From
    ``top_p >=`` :data:`REJECTION_FROM` by rejection over the whole vocabulary; below it from the top
    :data:`TOP_K` candidates when they hold every row's nucleus, else by rejection."""
    lse = jax.nn.logsumexp(scaled, axis=-1, keepdims=True)

    def from_whole(_):
        return _rejection_draw(jnp.exp(scaled - lse), key, top_p, per_round)

    def top_first(_):
        top, idx = jax.lax.top_k(scaled, min(TOP_K, scaled.shape[-1]))  # [B, K], descending
        p_top = jnp.exp(top - lse)

        def from_top(_):  # keep a candidate while the mass before it is < top_p, draw among the kept
            before = jnp.cumsum(p_top, axis=-1) - p_top
            pick = jax.random.categorical(key, jnp.where(before < top_p, top, -jnp.inf), axis=-1)
            return jnp.take_along_axis(idx, pick[:, None], axis=-1)[:, 0].astype(jnp.int32)

        fits = jnp.all(jnp.sum(p_top, axis=-1) >= top_p)  # every row's nucleus lies in its top K
        return jax.lax.cond(fits, from_top, from_whole, None)

    return jax.lax.cond(top_p >= REJECTION_FROM, from_whole, top_first, None)


def _rejection_draw(probs: jax.Array, key: jax.Array, top_p, per_round: int) -> jax.Array:
    """One id per row of ``probs`` (float32 ``[B, V]``, rows summing to 1) from the nucleus, by rejection:
    candidates are drawn from the whole distribution (:func:`_inverse_cdf`) and a candidate ``x`` is accepted
    when ``p_x > 0`` and the mass of the tokens strictly more likely than ``x`` is below ``top_p`` (or
    ``top_p >= 1``); a row takes its first accepted candidate, so its id follows ``probs`` renormalised on the
    nucleus. Each round draws ``per_round`` candidates per row from ``fold_in(key, round)``; a candidate is
    accepted with probability at least ``top_p`` (the nucleus mass), so few rounds run. Returns int32 ``[B]``."""
    b = probs.shape[0]

    def one_round(state):
        r, ids, done = state
        cand = _inverse_cdf(probs, jax.random.uniform(jax.random.fold_in(key, r), (b, per_round)))  # [B, M]
        p_c = jnp.take_along_axis(probs, cand, axis=-1)
        above = jnp.sum(jnp.where(probs[:, None] > p_c[..., None], probs[:, None], 0.0), axis=-1)  # [B, M]
        ok = (p_c > 0) & ((above < top_p) | (top_p >= 1.0))
        first = jnp.take_along_axis(cand, jnp.argmax(ok, axis=-1)[:, None], axis=-1)[:, 0]
        return r + 1, jnp.where(done, ids, first), done | jnp.any(ok, axis=-1)

    start = (jnp.int32(0), jnp.zeros((b,), jnp.int32), jnp.zeros((b,), bool))
    return jax.lax.while_loop(lambda state: ~jnp.all(state[2]), one_round, start)[1]


def _inverse_cdf(probs: jax.Array, u: jax.Array, chunk: int = 256) -> jax.Array:
    """Ids ``[B, M]`` int32 with ``P(id = j)`` proportional to ``probs[:, j]`` (float32 ``[B, V]``, >= 0), one
    per uniform in ``u`` (float32 ``[B, M]`` in ``[0, 1)``). Two levels (chunks of ``chunk`` ids, then ids in
    the chosen chunk) keep float32 cumulative sums short, so a small probability is not lost to the rounding
    of a running total near 1. An id of probability 0 is never returned, except at a rounding edge where the
    last chunk is clipped to (callers reject those)."""
    b, v = probs.shape
    blocks = jnp.pad(probs, ((0, 0), (0, -v % chunk))).reshape(b, -1, chunk)  # [B, G, C]
    sums = jnp.sum(blocks, axis=-1)  # [B, G]
    cum = jnp.cumsum(sums, axis=-1)
    target = u * cum[:, -1:]  # [B, M]
    g = jnp.minimum(jnp.sum(cum[:, None, :] <= target[..., None], axis=-1), blocks.shape[1] - 1)  # [B, M]
    before = jnp.take_along_axis(cum - sums, g, axis=-1)  # mass of the chunks before g
    inner = jnp.cumsum(jnp.take_along_axis(blocks, g[..., None], axis=1), axis=-1)  # [B, M, C]
    j = jnp.minimum(jnp.sum(inner <= (target - before)[..., None], axis=-1), chunk - 1)
    return jnp.minimum(g * chunk + j, v - 1).astype(jnp.int32)


@dataclass
class Generation:
    """Result of :func:`generate`.

    ``tokens``: the new ids (EOS included when generation stopped on it). ``stop``: ``"eos"``, ``"stop"``
    (``should_stop`` said so), ``"max_new_tokens"`` or ``"max_positions"``. ``logits``: float32 ``[len(tokens), vocab_size]``, the
    scores each new token was chosen from (only with ``return_logits=True``).
    """

    tokens: list[int]
    stop: str
    logits: np.ndarray | None = field(default=None, repr=False)


def _bucket(n: int, cap: int) -> int:
    """Shapes are rounded up to a power of two (at least 16, at most ``cap``) so few programs compile."""
    return min(cap, max(16, 1 << (n - 1).bit_length()))


@functools.lru_cache(maxsize=16)
def _compiled(cfg: ModelConfig, compute_dtype: str, greedy: bool):
    def step(params, cache, tokens, start, last, key, temperature, top_p, vocab_limit):
        logits, cache = forward_cached(params, cfg, tokens, start, cache, compute_dtype)
        row = jax.lax.dynamic_index_in_dim(logits, last, axis=1, keepdims=False)
        return sample_next(row, key, temperature, top_p, vocab_limit, greedy), row, cache

    def full(params, buf, last, key, temperature, top_p, vocab_limit):  # uncached reference
        logits = build_model(cfg, compute_dtype).apply(params, buf)
        row = jax.lax.dynamic_index_in_dim(logits, last, axis=1, keepdims=False)
        return sample_next(row, key, temperature, top_p, vocab_limit, greedy), row

    return jax.jit(step, donate_argnums=(1,)), jax.jit(full)


def generate(params, cfg: ModelConfig, prompt: list[int], max_new_tokens: int = 64, *, temperature: float = 0.0,
             top_p: float = 1.0, seed: int = 0, eos_id: int | None = EOS_ID, vocab_limit: int | None = None,
             compute_dtype: str = "float32", use_cache: bool = True, return_logits: bool = False,
             should_stop: Callable[[list[int]], bool] | None = None) -> Generation:
    """Continue ``prompt`` with the model (batch of one).

    Args:
        params, cfg: the model (Haiku layout, :mod:`xgen_train.model.model`).
        prompt: token ids (at least one; XGen prepends no BOS, SPEC §1: start an empty text with EOS).
        max_new_tokens: at most this many new tokens (>= 1).
        temperature: 0 for greedy decoding; > 0 scales the logits before sampling.
        top_p: nucleus mass in ``(0, 1]``; 1 samples from the whole distribution.
        seed: sampling seed (ignored when greedy).
        eos_id: stop after this id (None: never stop early).
        vocab_limit: never emit ids ``>= vocab_limit`` (``xgen generate`` passes 50,313).
        use_cache: False runs a full forward over the whole sequence for every token (the reference the
            tests compare the cached path against).
        return_logits: keep each step's logits in the result.
        should_stop: called with the new ids after each token; True stops with ``stop == "stop"`` (a chat's
            stop text, :mod:`xgen_train.evaluate.chat`).
    Raises:
        InputError (a ValueError): empty prompt, prompt as long as ``max_positions`` or longer, ids outside the
            vocabulary, or an invalid ``temperature`` / ``top_p`` / ``max_new_tokens``.
    """
    _check_request(cfg, prompt, max_new_tokens, temperature, top_p)
    step, full = _compiled(cfg, str(jnp.dtype(compute_dtype)), temperature == 0)
    n0 = len(prompt)
    budget = min(cfg.max_positions, n0 + max_new_tokens) - n0
    size = _bucket(n0 + budget, cfg.max_positions)  # cache slots; those past the last token stay masked
    knobs = (jnp.float32(temperature or 1.0), jnp.float32(top_p),
             jnp.int32(cfg.vocab_size if vocab_limit is None else vocab_limit))
    params = jax.tree.map(jnp.asarray, params)
    base = jax.random.PRNGKey(seed)
    if use_cache:
        tok, last, advance = _cached_decoder(step, params, cfg, prompt, size, jax.random.fold_in(base, 0), knobs)
    else:
        tok, last, advance = _full_decoder(full, params, prompt, size, jax.random.fold_in(base, 0), knobs)
    new: list[int] = []
    kept_logits: list[np.ndarray] = []
    stop = "max_new_tokens" if budget == max_new_tokens else "max_positions"
    for i in range(budget):
        t = int(tok[0])
        new.append(t)
        if return_logits:
            kept_logits.append(np.asarray(last[0]))
        if eos_id is not None and t == eos_id:
            stop = "eos"
            break
        if should_stop is not None and should_stop(new):
            stop = "stop"
            break
        if i + 1 == budget:
            break
        tok, last = advance(t, n0 + i, jax.random.fold_in(base, i + 1))
    return Generation(tokens=new, stop=stop, logits=np.stack(kept_logits) if return_logits else None)


def _check_request(cfg: ModelConfig, prompt: list[int], max_new_tokens: int, temperature: float,
                   top_p: float) -> None:
    """Raise InputError for the invalid arguments :func:`generate` lists."""
    if not prompt:
        raise InputError("prompt is empty: give at least one token (e.g. EOS 50256 to start a new document)")
    if any(not 0 <= int(t) < cfg.vocab_size for t in prompt):
        raise InputError(f"prompt ids must be in [0, {cfg.vocab_size})")
    if len(prompt) >= cfg.max_positions:
        raise InputError(f"prompt has {len(prompt)} tokens; the model accepts at most {cfg.max_positions} "
                         "positions, leaving no room for new tokens")
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not (temperature >= 0 and math.isfinite(temperature)):
        raise InputError(f"temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise InputError(f"top_p must be in (0, 1], got {top_p}")


def _cached_decoder(step, params, cfg: ModelConfig, prompt: list[int], size: int, key, knobs):
    """Prefill a ``size``-slot cache with ``prompt`` (``step`` of :func:`_compiled`). Returns the first new token
    ``[1]`` int32, its logits ``[1, vocab]`` and ``advance(t, pos, key)``: feed token ``t`` at position ``pos``,
    get the next token and logits (the cache is updated in place of the donated one)."""
    n0 = len(prompt)
    # the prompt is padded to a bucket: padded slots are written but masked for every real position, and each
    # is overwritten by its real token before any later position reads it
    cache = init_cache(cfg, 1, size)
    padded = np.zeros((1, min(size, _bucket(n0, size))), np.int32)
    padded[0, :n0] = prompt
    tok, last, cache = step(params, cache, jnp.asarray(padded), jnp.int32(0), jnp.int32(n0 - 1), key, *knobs)

    def advance(t: int, pos: int, key):
        nonlocal cache
        tok, last, cache = step(params, cache, jnp.asarray([[t]], jnp.int32), jnp.int32(pos), jnp.int32(0),
                                key, *knobs)
        return tok, last

    return tok, last, advance


def _full_decoder(full, params, prompt: list[int], size: int, key, knobs):
    """:func:`_cached_decoder` without a cache (the uncached reference): every token runs ``full`` over a
    ``size``-token buffer holding the sequence so far."""
    n0 = len(prompt)
    buf = np.zeros((1, size), np.int32)
    buf[0, :n0] = prompt
    tok, last = full(params, jnp.asarray(buf), jnp.int32(n0 - 1), key, *knobs)

    def advance(t: int, pos: int, key):
        buf[0, pos] = t
        return full(params, jnp.asarray(buf), jnp.int32(pos), key, *knobs)

    return tok, last, advance
