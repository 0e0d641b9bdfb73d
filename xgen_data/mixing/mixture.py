"""Mixture planning and document selection by sampling proportion (SPEC §2).

Token accounting: in a packed stream every document is followed by one EOS separator, so a document
*costs* ``n_tokens + 1`` tokens. ``unique`` tokens of a subset are the summed cost of its kept documents;
a stage gives subset ``s`` ``effective_s = proportion_s × stage tokens`` tokens; ``epochs = effective /
unique`` (> 1: documents repeat; < 1: a subsample). Proportions are by tokens, never documents.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from xgen_data.errors import InputError
from xgen_data.mixing.recipe import Recipe, Stage


def stage_seed(seed: int, *names: str) -> int:
    """A 64-bit seed derived from the recipe seed and step names (stable across runs and platforms)."""
    digest = hashlib.sha256(":".join([str(seed), *names]).encode()).digest()
    return int.from_bytes(digest[:8], "little")


@dataclass(frozen=True)
class SubsetPlan:
    stage: str
    subset: str
    documents: int  # kept documents available
    unique_tokens: int  # sum of (n_tokens + 1) over kept documents
    effective_tokens: int  # tokens this stage takes from the subset
    proportion: float  # sampling proportion (recipe)

    @property
    def epochs(self) -> float:
        return self.effective_tokens / self.unique_tokens if self.unique_tokens else float("inf")


def effective_tokens(stage: Stage) -> dict[str, int]:
    """Integer token targets per subset summing exactly to ``stage.tokens``: the recipe's own
    ``effective_tokens`` (+ ``replay``) when given, else ``proportion × tokens`` (largest-remainder rounding)."""
    if stage.targets is not None:
        return dict(stage.targets)
    raw = {s: p * stage.tokens for s, p in stage.proportions.items()}
    out = {s: int(v) for s, v in raw.items()}
    short = stage.tokens - sum(out.values())
    for s in sorted(raw, key=lambda s: (out[s] - raw[s], s))[:short]:
        out[s] += 1
    return out


def short_tokens(tokens: int) -> str:
    """Tokens in the unit that fits, two decimals and thousands separators: billions as Table 2 prints them
    (``1,309.99B``; exact for the xgen-7b budgets, multiples of 10M tokens), else millions (``3.07M``),
    thousands (``131.07K``) or the plain count (``512``), so a demo-scale plan never reads ``0.00B``."""
    for unit, scale in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if abs(tokens) >= scale:
            return f"{tokens / scale:,.2f}{unit}"
    return f"{tokens:,}"


def stage_summary(stage: Stage) -> str:
    """One line: a stage's tokens and how they are made up (``stage2: 110.00B = stage1 mixture 55.00B +
    starcoder 55.00B``), license policies and language weights named by the stage included."""
    parts = []
    own = dict(effective_tokens(stage))
    if stage.replay is not None:
        parts.append(f"{stage.replay[0]} mixture {short_tokens(stage.replay[1])} ("
                     + ", ".join(f"{k} {short_tokens(v)}" for k, v in stage.replay[2].items()) + ")")
        own = {k: v - stage.replay[2].get(k, 0) for k, v in own.items()}
    parts += [f"{k} {short_tokens(v)}" for k, v in own.items() if v]
    subs = " + ".join(f"{ss.name} {short_tokens(ss.tokens)}" for ss in stage.substages)
    lic = "".join(f"; {k}: license policy {v}" for k, v in stage.licenses.items())
    lic += "".join(f"; {k}: languages {v if isinstance(v, str) else 'weighted by a table'}"
                   for k, v in stage.languages.items())
    return f"{stage.name}: {short_tokens(stage.tokens)} = {' + '.join(parts)} (sub-stages {subs}){lic}"


def packing_notes(recipe: Recipe) -> list[str]:
    """One line per place where what the recipe asks and what a build packs differ, with both numbers and
    the difference: a sub-stage budget that is not a whole number of sequences (packs ``tokens // seq_len``
    sequences), and a stage whose sub-stage budgets sum to less than its tokens (the rest is planned, never
    packed, so packed shares drift from the proportions). Empty when every number is packed as asked."""
    out = []
    for st in recipe.stages:
        for ss in st.substages:
            packed = ss.n_sequences * ss.seq_len
            if packed != ss.tokens:
                out.append(f"{st.name}/{ss.name}: asks {ss.tokens:,} tokens, packs {ss.n_sequences:,} sequences of "
                           f"{ss.seq_len} = {packed:,} tokens ({ss.tokens - packed:,} fewer: budgets are cut to "
                           "whole sequences)")
        budget = sum(ss.tokens for ss in st.substages)
        if budget < st.tokens:
            out.append(f"{st.name}: asks {st.tokens:,} tokens, its sub-stage budgets sum to {budget:,} "
                       f"({st.tokens - budget:,} planned but not packed, so packed shares drift from the proportions)")
    return out


def plan(recipe: Recipe, subset_stats: dict[str, tuple[int, int]]) -> list[SubsetPlan]:
    """The mixture plan per stage and subset.

    Args:
        subset_stats: ``{subset: (kept documents, unique tokens incl. one EOS per document)}``; a subset
            missing here has zero documents.
    """
    rows = []
    for stage in recipe.stages:
        for subset, eff in effective_tokens(stage).items():
            docs, unique = subset_stats.get(subset, (0, 0))
            rows.append(SubsetPlan(stage.name, subset, docs, unique, eff, stage.proportions[subset]))
    return rows


UNKNOWN_LANGUAGE = "(unknown)"


def language_targets(stage: Stage, subset: str, target: int, unique: dict[str, int]) -> dict[str, int]:
    """Tokens per language inside one subset's ``target`` (stage ``languages`` table; SPEC §2: StarCoder data
    "keeps all 86 programming languages at their original relative weights").

    ``"original"``: each language's share of the subset's unique tokens after filtering (documents with no
    language form their own group, :data:`UNKNOWN_LANGUAGE`); a table: its weights (languages it does not
    name get nothing). Exact integers summing to ``target`` (:func:`xgen_data.mixing.recipe.split_tokens`).

    Args:
        unique: ``{language: unique tokens incl. EOS}`` of the subset's kept documents
            (:meth:`xgen_data.mixing.selection.SubsetDocs.tokens_by_language`).
    Raises:
        ValueError: a weighted language has no kept documents.
    """
    from xgen_data.mixing.recipe import split_tokens

    spec = stage.languages[subset]
    if spec == "original":
        return split_tokens(target, dict(sorted(unique.items())))
    missing = sorted(set(spec) - set(unique))
    if missing:
        raise InputError(f"stage {stage.name!r}: languages.{subset} weights {', '.join(missing)}, which has no kept "
                         f"documents (languages there: {', '.join(sorted(unique))})")
    return split_tokens(target, {k: round(w * 10**9) for k, w in sorted(spec.items())})


@dataclass(frozen=True)
class LanguagePlan:
    stage: str
    subset: str
    language: str
    documents: int
    unique_tokens: int  # incl. one EOS per document
    share: float  # of the subset's unique tokens
    effective_tokens: int

    @property
    def epochs(self) -> float:
        return self.effective_tokens / self.unique_tokens if self.unique_tokens else float("inf")


def language_plan(recipe: Recipe, docs: dict) -> list[LanguagePlan]:
    """The per-language table of every subset a stage weights by language (``xgen mix plan``).

    Args:
        docs: ``{subset: SubsetDocs}`` (:func:`xgen_data.mixing.selection.kept_documents`).
    """
    rows = []
    for stage in recipe.stages:
        targets = effective_tokens(stage)
        for subset in sorted(stage.languages):
            d = docs.get(subset)
            if d is None or not len(d.n_tokens):
                continue
            unique = d.tokens_by_language()
            per = language_targets(stage, subset, targets[subset], unique)
            count = dict(zip(d.languages, np.bincount(d.lang_code, minlength=len(d.languages)).tolist()))
            total = int(d.costs.sum())
            for name in sorted(set(per) | set(unique)):
                uniq = unique.get(name, 0)
                rows.append(LanguagePlan(stage.name, subset, name, count.get(name, 0), uniq, uniq / total,
                                         per.get(name, 0)))
    return rows


def select_documents(costs: np.ndarray, target: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Choose document instances whose summed cost is exactly ``target`` (sampling with repetition by epochs).

    Every document is taken ``floor(epochs)`` times; the fractional epoch is a uniformly random subset
    (documents taken in a seeded random order until the target is met; the last one is cut short).

    Args:
        costs: int64 ``[n_docs]``, each document's cost ``n_tokens + 1`` (>= 2).
        target: tokens to select (>= 0).
        rng: the seeded generator (its state advances).
    Returns:
        ``(doc_index, take)``: int64 arrays, one entry per instance: the document index into ``costs`` and
        how many of its content tokens are used (``costs - 1`` unless cut short). ``sum(take + 1) ==
        target`` exactly, except ``target == 1`` (one token cannot hold a document and its EOS).
    Raises:
        ValueError: ``target > 0`` with no documents.
    """
    costs = np.asarray(costs, dtype=np.int64)
    if target <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    total = int(costs.sum())
    if total == 0:
        raise InputError("cannot select tokens from an empty subset")
    full, rest = divmod(target, total)
    index = np.tile(np.arange(len(costs), dtype=np.int64), full)
    take = np.tile(costs - 1, full)
    if rest:
        order = rng.permutation(len(costs))
        cum = np.cumsum(costs[order])
        k = int(np.searchsorted(cum, rest, side="left"))  # order[k] is the first doc reaching `rest`
        left = rest - (int(cum[k - 1]) if k else 0)  # tokens left for order[k], its EOS included
        index = np.concatenate([index, order[:k + 1]])
        take = np.concatenate([take, costs[order[:k + 1]] - 1])
        take[-1] = left - 1
        if take[-1] == 0:
            # One token left: an empty document would double the EOS. Move one token from an earlier
            # instance that can spare it, so the last one holds one token and its EOS.
            donors = np.flatnonzero(take[:-1] >= 2)
            if len(donors):
                take[donors[-1]] -= 1
                take[-1] = 1
            else:
                index, take = index[:-1], take[:-1]
    return index, take
