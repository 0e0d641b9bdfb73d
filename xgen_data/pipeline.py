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

    kw = {k: v for k, v in recipe.dedup.items() if k != "enabled"}
    return dedup.recorded_params(license_allow=recipe.allow_list(), **kw)


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

            kw = {k: v for k, v in recipe.dedup.items() if k != "enabled"}
            report.dedup = dedup.run_dedup(corpus_dir, workers=workers, progress=progress,
                                           license_allow=recipe.allow_list(), **kw)
        else:
            skipped.append("dedup")
    elif corpus.step_state("dedup") is not None or corpus.has_step("dedup"):
        with corpus.lock():
            corpus.clear_step("dedup")  # a recipe without dedup must not inherit old decisions
    report.skipped = tuple(skipped)
    return report
