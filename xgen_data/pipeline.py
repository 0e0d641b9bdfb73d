"""The recipe flow: the corpus steps a recipe asks for (filters, then dedup), run only when out of date.

Each step records in ``corpus.json`` (``steps``) the parameters it ran with, a fingerprint of the corpus
parts and the states of the steps before it (:meth:`xgen_data.corpus.Corpus.record_step`), whether it was
run from here or as its own command; the flow re-runs a step only when one of those differs. ``xgen mix plan``,
``xgen mix build`` and ``xgen demo`` all go through :func:`apply_recipe_steps`, so a plan always describes
the documents the build will pack.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from xgen_data import filters
from xgen_data.corpus import Corpus
from xgen_data.recipe import Recipe


@dataclass
class StepsReport:
    """Reports of the steps that ran (None: not asked for, or up to date)."""

    filter: Any = None
    dedup: Any = None
    skipped: tuple[str, ...] = ()


def filter_params(recipe: Recipe) -> dict:
    """The parameters :func:`xgen_data.filters.run_filters` records for this recipe."""
    return filters.params(recipe.min_tokens, recipe.license_subsets, recipe.allow_list())


def dedup_params(recipe: Recipe) -> dict:
    """The parameters :func:`xgen_data.dedup.run_dedup` records for this recipe."""
    from xgen_data import dedup

    return dedup.recorded_params(license_allow=recipe.allow_list(), **recipe.dedup_kwargs())


def _up_to_date(corpus: Corpus, step: str, params: dict) -> bool:
    state = corpus.step_state(step)
    if state is None or not corpus.has_step(step):
        return False
    earlier = {s: corpus.step_state(s) for s in state.get("after", {})}
    return (state["params"] == json.loads(json.dumps(params)) and state["parts"] == corpus.parts_fingerprint()
            and state.get("after", {}) == earlier)


def apply_recipe_steps(corpus_dir: str, recipe: Recipe, workers: int = 2, progress: bool = True,
                       force: bool = False) -> StepsReport:
    """Run the recipe's filters and (when ``[dedup] enabled``) deduplication on the corpus.

    Raises:
        CorpusError: not a corpus; ValueError: invalid step parameters (from the steps themselves).
    """
    corpus = Corpus(corpus_dir)
    with corpus.lock():
        return _apply(corpus, corpus_dir, recipe, workers, progress, force)


def _apply(corpus: Corpus, corpus_dir: str, recipe: Recipe, workers: int, progress: bool, force: bool) -> StepsReport:
    report = StepsReport()
    skipped = []
    if force or not _up_to_date(corpus, "filter", filter_params(recipe)):
        report.filter = filters.run_filters(corpus_dir, recipe.min_tokens, recipe.license_subsets, recipe.allow_list())
    else:
        skipped.append("filter")
    if recipe.dedup.get("enabled", True):
        # dedup's state includes the filter state it ran after (it prefers copies the filters keep)
        if force or not _up_to_date(corpus, "dedup", dedup_params(recipe)):
            from xgen_data import dedup

            report.dedup = dedup.run_dedup(corpus_dir, workers=workers, progress=progress,
                                           license_allow=recipe.allow_list(), **recipe.dedup_kwargs())
        else:
            skipped.append("dedup")
    elif corpus.step_state("dedup") is not None or corpus.has_step("dedup"):
        corpus.clear_step("dedup")  # a recipe without dedup must not inherit old decisions
    report.skipped = tuple(skipped)
    return report


def plan_recipe(corpus_dir: str, recipe: Recipe, workers: int = 2, progress: bool = True):
    """Recipe steps, then the kept documents per recipe subset, under one corpus lock.

    Returns ``(StepsReport, {subset: SubsetDocs})`` for :func:`xgen_data.mixture.plan`.
    """
    from xgen_data import packing

    corpus = Corpus(corpus_dir)
    with corpus.lock():
        steps = apply_recipe_steps(corpus_dir, recipe, workers, progress)
        return steps, packing.kept_documents(corpus_dir, recipe.subsets())


def build_recipe(corpus_dir: str, recipe: Recipe, out_dir: str, workers: int = 2, progress: bool = True):
    """Recipe steps, then :func:`xgen_data.packing.build`, under one corpus lock (no other command can
    change the decisions between the check and the packing). Returns ``(StepsReport, BuildReport)``."""
    from xgen_data import packing

    corpus = Corpus(corpus_dir)
    packing.check_out_dir(out_dir, corpus)  # fail before any step runs
    with corpus.lock():
        steps = apply_recipe_steps(corpus_dir, recipe, workers, progress)
        return steps, packing.build(corpus_dir, recipe, out_dir, progress=progress)
