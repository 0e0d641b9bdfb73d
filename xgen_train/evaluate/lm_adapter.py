"""An xgen model as an lm-evaluation-harness language model (``lm_eval.api.model.TemplateLM``).

lm-eval turns every task into three kinds of requests; :class:`XgenLM` answers them with the JAX model:

* ``loglikelihood(context, continuation)``: ``TemplateLM`` tokenises (the XGen tokenizer, SPEC §1, data
  mode; an empty context becomes EOS, the prefix token) and :meth:`XgenLM._loglikelihood_tokens` scores
  ``(context + continuation)[-(L+1):][:-1]`` exactly as lm-eval's ``HFLM`` does (``L`` = the model's
  ``max_positions``): the sum of the continuation tokens' log-probabilities (float32 log-softmax) and
  whether each was the argmax.
* ``loglikelihood_rolling(text)``: lm-eval's own disjoint rolling windows (``get_rolling_token_windows`` with
  ``context_len=1``, ``make_disjoint_window``), scored as above and summed.
* ``generate_until(context, gen_kwargs)``: greedy (or sampled when ``do_sample``) decoding with the KV cache
  (:func:`xgen_train.evaluate.sampling.sample_completions`), cut at the ``until`` strings; the context is
  left-truncated to ``L - max_gen_toks`` tokens.

Requests with the same model input share one decoder row (a multiple-choice question with one-token answers,
as MMLU's letters, reads its context once, as lm-eval's ``HFLM`` does with its one-token-continuation cache).
Distinct inputs are scored in batches of ``batch_size`` rows, longest first, each padded on the right to a
length bucket (16, 24, 32, 48, 64, 96, ..., at most ``L``): a model compiles one program per length bucket
(and per power-of-two count of scored positions and of requests). Right padding cannot change the scores: the
model is causal, and padded positions are masked out of the sums. The LM head runs only at the scored
positions, and only the per-request sums and greedy flags are copied back to the host.
"""
from __future__ import annotations

import functools

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from tqdm import tqdm

from xgen_data import tokenizer as xtok
from xgen_data.errors import InputError
from xgen_train.evaluate.sampling import sample_completions
from xgen_train.model.config import ModelConfig
from xgen_train.model.model import linear_logits, llama_hidden, lm_head_weight
from xgen_train.model.precision import as_policy

__all__ = ["XgenLM", "length_bucket", "score_batches"]


@functools.lru_cache(maxsize=8)
def _scorer(cfg: ModelConfig, compute_dtype: str):
    """jit'ed ``score(params, tokens [B,T], idx [B,K], row [R], targets [R,K], mask [R,K]) -> (sum logp [R],
    greedy [R])``: the decoder runs once per input row over all ``T`` positions, the LM head only at the row's
    ``K`` scored positions (``idx``), so the ``[B, T, vocab]`` logits are never formed; request ``r`` reads
    row ``row[r]``'s log-softmax at its ``targets`` (several requests may share a row). Only the ``[R]`` sums
    and greedy flags leave the device."""
    policy = as_policy(compute_dtype)

    def fwd(tokens, idx):
        h = llama_hidden(tokens, cfg, policy)  # [B, T, d]
        picked = jnp.take_along_axis(h, idx[..., None], axis=1)  # [B, K, d]
        return linear_logits(picked, lm_head_weight(cfg), policy)  # float32 [B, K, V]

    apply = hk.without_apply_rng(hk.transform(fwd)).apply

    @jax.jit
    def score(params, tokens, idx, row, targets, mask):
        logits = apply(params, tokens, idx)
        lse = jax.nn.logsumexp(logits, axis=-1)  # [B, K]
        best = jnp.argmax(logits, axis=-1)  # [B, K]
        pos = jnp.arange(idx.shape[1])[None, :]
        tgt = logits[row[:, None], pos, targets] - lse[row]  # [R, K] log p
        greedy = best[row] == targets
        return jnp.sum(jnp.where(mask, tgt, 0.0), axis=-1), jnp.all(greedy | ~mask, axis=-1)

    return score


def length_bucket(n: int, cap: int) -> int:
    """``n`` rounded up to the next of 16, 24, 32, 48, 64, 96, ... (powers of two and 1.5x them), at most ``cap``:
    few compiled shapes, at most a third of a batch's positions spent on padding."""
    size = 16
    while size < n:
        size = size * 3 // 2 if size & (size - 1) == 0 else size * 4 // 3
    return min(size, cap)


def _shared_rows(pairs, limit: int):
    """The model input of each request, deduplicated: ``rows`` = ``[(input ids, scored positions)]`` (one per
    distinct input, scoring the most positions any of its requests needs), ``requests`` = ``[(row, target ids,
    n)]`` in input order (the request scores the last ``n`` positions of its row against ``target ids``)."""
    index: dict[tuple[int, ...], int] = {}
    rows: list[list] = []
    requests = []
    for i, (ctx, cont) in enumerate(pairs):
        if not cont or len(ctx) + len(cont) < 2:
            raise InputError(f"request {i}: need a non-empty continuation and at least one context token")
        whole = (list(ctx) + list(cont))[-(limit + 1):]
        n = min(len(cont), len(whole) - 1)
        r = index.setdefault(tuple(whole[:-1]), len(rows))
        if r == len(rows):
            rows.append([whole[:-1], n])
        rows[r][1] = max(rows[r][1], n)
        requests.append((r, whole[-n:], n))
    return rows, requests


def _pack(rows, requests, members, chunk, batch_size: int, limit: int):
    """Host arrays of one batch: ``tokens [B,T]``, ``idx [B,K]``, ``row [R]``, ``targets [R,K]``, ``mask [R,K]``
    (``T`` a length bucket, ``K`` and ``R`` powers of two, so few shapes compile) and the request ids in order."""
    t = length_bucket(len(rows[chunk[0]][0]), limit)
    k = min(t, 1 << (max(rows[r][1] for r in chunk) - 1).bit_length())
    reqs = [q for r in chunk for q in members[r]]
    n_req = max(batch_size, 1 << (len(reqs) - 1).bit_length())
    tokens, idx = np.zeros((batch_size, t), np.int32), np.zeros((batch_size, k), np.int32)
    row, targets = np.zeros(n_req, np.int32), np.zeros((n_req, k), np.int32)
    mask = np.zeros((n_req, k), bool)
    slot = {}
    for b, r in enumerate(chunk):
        inp, n_row = rows[r]
        tokens[b, :len(inp)] = inp
        idx[b, :n_row] = np.arange(len(inp) - n_row, len(inp))
        slot[r] = b
    for j, q in enumerate(reqs):
        r, tgt, n = requests[q]
        off = rows[r][1] - n  # the request's positions are the last n of its row's n_row
        row[j] = slot[r]
        targets[j, off:off + n] = tgt
        mask[j, off:off + n] = True
    return (tokens, idx, row, targets, mask), reqs


def score_batches(params, cfg: ModelConfig, pairs: list[tuple[list[int], list[int]]], batch_size: int = 16,
                  compute_dtype: str = "float32", progress: bool = False) -> list[tuple[float, bool]]:
    """``(sum of log p(continuation | context), all continuation tokens greedy)`` for each pair of
    token-id lists ``(context, continuation)``, in input order.

    Each pair is scored as lm-eval's HFLM does: the model reads ``(context + continuation)[-(L+1):][:-1]``
    (``L`` = ``cfg.max_positions``) and the last ``len(continuation)`` positions are scored. Log-probabilities
    are float32 natural logs. Requests whose model input is the same (multiple-choice answers of one token
    after a shared context, as in MMLU) share one decoder row. Shapes: batches of ``batch_size`` distinct
    inputs, longest first, padded to a length bucket (:func:`length_bucket`), the scored positions and the
    request count to powers of two.

    Raises:
        InputError: an empty continuation, or an empty context with a one-token continuation (nothing to
            condition on).
    """
    rows, requests = _shared_rows(pairs, cfg.max_positions)
    members: list[list[int]] = [[] for _ in rows]
    for q, (r, _, _) in enumerate(requests):
        members[r].append(q)
    order = sorted(range(len(rows)), key=lambda r: (-len(rows[r][0]), -rows[r][1]))
    score = _scorer(cfg, compute_dtype)
    out: list[tuple[float, bool] | None] = [None] * len(requests)
    bar = tqdm(total=len(requests), desc="xgen loglikelihood", disable=not progress)

    def collect(reqs, result):
        lp, greedy = (np.asarray(a) for a in result)
        for j, q in enumerate(reqs):
            out[q] = (float(lp[j]), bool(greedy[j]))
        bar.update(len(reqs))

    pending = None  # the batch JAX is running while the host packs the next one
    for first in range(0, len(order), batch_size):
        arrays, reqs = _pack(rows, requests, members, order[first:first + batch_size], batch_size,
                             cfg.max_positions)
        running = (reqs, score(params, *(jnp.asarray(a) for a in arrays)))
        if pending is not None:
            collect(*pending)
        pending = running
    if pending is not None:
        collect(*pending)
    bar.close()
    return out  # type: ignore[return-value]


class XgenLM(TemplateLM):
    """lm-eval model backed by xgen's JAX LLaMA (see the module doc for how each request type is answered).

    Args:
        params, cfg: the model (Haiku layout, float32), e.g. from
            :func:`xgen_train.export.hf.load_init` (a run, a checkpoint or a Hugging Face folder).
        batch_size: rows per scoring batch (fixed, so shapes repeat).
        max_gen_toks: default new-token budget of ``generate_until`` when a task names none.
    """

    def __init__(self, params, cfg: ModelConfig, batch_size: int = 16, max_gen_toks: int = 256,
                 compute_dtype: str = "float32", progress: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        self.params = jax.tree.map(jnp.asarray, params)
        self.batch_size = int(batch_size)
        self.max_gen_toks = int(max_gen_toks)
        self.compute_dtype = compute_dtype
        self.progress = progress

    @property
    def eot_token_id(self) -> int:
        return xtok.EOS_ID

    @property
    def max_length(self) -> int:
        return self.cfg.max_positions

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """XGen ids of ``string`` (data mode: no BOS, special-token text is plain text, SPEC §1)."""
        return xtok.encode(string)

    def tok_decode(self, tokens, **kwargs) -> str:
        return xtok.decode(list(tokens))

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        pairs = [(ctx, cont) for _, ctx, cont in requests]
        res = score_batches(self.params, self.cfg, pairs, self.batch_size, self.compute_dtype,
                            progress=self.progress and not disable_tqdm)
        for (key, _, _), r in zip(requests, res):
            if key is not None and key[0] is not None:
                self.cache_hook.add_partial("loglikelihood", key, r)
        return res

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        windows, owner = [], []
        for idx, (string,) in enumerate(req.args for req in requests):
            for ctx, cont in map(lm_utils.make_disjoint_window, lm_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append((None, ctx, cont))
                owner.append(idx)
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
        totals = [0.0] * len(requests)
        for idx, (lp, _) in zip(owner, scores):
            totals[idx] += lp
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out = []
        for req in tqdm(requests, desc="xgen generate_until", disable=disable_tqdm or not self.progress):
            context, gen_kwargs = req.args
            kw = dict(gen_kwargs or {})
            until = kw.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_gen = int(kw.pop("max_gen_toks", self.max_gen_toks))
            sample = bool(kw.pop("do_sample", False)) and float(kw.get("temperature", 1.0) or 0) > 0
            temperature = float(kw.get("temperature", 1.0)) if sample else 0.0
            ids = self.tok_encode(context)[-max(1, self.max_length - max_gen):] or [self.eot_token_id]
            done = sample_completions(self.params, self.cfg, ids, 1, max_gen, temperature=temperature,
                                      top_p=float(kw.get("top_p", 1.0) or 1.0), seed=int(kw.get("seed", 0) or 0),
                                      stops=until, compute_dtype=self.compute_dtype)[0]
            out.append(done.text)
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), done.text)
        return out
