"""The recipe flow: the corpus steps a recipe asks for (filters, then dedup), run only when out of date.

Each step records its parameters and a fingerprint of the corpus parts in ``corpus.json`` (``steps``);
running the flow again with the same parameters on the same parts does nothing. ``xgen mix plan``,
``xgen mix build`` and ``xgen demo`` all go through :func:`apply_recipe_steps`, so a plan always describes
the documents the build will pack.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from xgen_data import filters
from xgen_data.corpus import Corpus
from xgen_data.recipe import Recipe


def parts_fingerprint(corpus: Corpus) -> str:
    """SHA-256 over the corpus's part names (new ingests change part names, so they change this)."""
    return hashlib.sha256("\n".join(f"{p.subset}/{p.name}" for p in corpus.parts()).encode()).hexdigest()


@dataclass
class StepsReport:
    """Reports of the steps that ran (None: not asked for, or up to date)."""

    filter: Any = None
    dedup: Any = None
    skipped: tuple[str, ...] = ()


def _up_to_date(corpus: Corpus, step: str, params: dict, fingerprint: str) -> bool:
    state = corpus.read_meta().get("steps", {}).get(step)
    return (state == {"params": params, "parts": fingerprint}) and corpus.has_step(step)


def _record(corpus: Corpus, step: str, params: dict, fingerprint: str) -> None:
    meta = corpus.read_meta()
    meta.setdefault("steps", {})[step] = {"params": params, "parts": fingerprint}
    corpus.write_meta(meta)


def apply_recipe_steps(corpus_dir: str, recipe: Recipe, workers: int = 2, progress: bool = True,
                       force: bool = False) -> StepsReport:
    """Run the recipe's filters and (when ``[dedup] enabled``) deduplication on the corpus.

    Raises:
        CorpusError: not a corpus; ValueError: invalid step parameters (from the steps themselves).
    """
    corpus = Corpus(corpus_dir)
    fp = parts_fingerprint(corpus)
    report = StepsReport()
    skipped = []
    fparams = {"min_tokens": recipe.min_tokens, "license_subsets": list(recipe.license_subsets),
               "allow": list(recipe.allow_list())}
    if force or not _up_to_date(corpus, "filter", fparams, fp):
        report.filter = filters.run_filters(corpus_dir, recipe.min_tokens, recipe.license_subsets, recipe.allow_list())
        _record(corpus, "filter", fparams, fp)
    else:
        skipped.append("filter")
    dparams = {k: v for k, v in recipe.dedup.items() if k != "enabled"}
    # Dedup prefers copies the filters keep, so its state includes the filter's parameters.
    dstate = json.loads(json.dumps({**dparams, "filter": fparams}))
    if recipe.dedup.get("enabled", True):
        if force or report.filter is not None or not _up_to_date(corpus, "dedup", dstate, fp):
            from xgen_data import dedup

            report.dedup = dedup.run_dedup(corpus_dir, workers=workers, progress=progress,
                                           license_allow=recipe.allow_list(), **dparams)
            _record(corpus, "dedup", dstate, fp)
        else:
            skipped.append("dedup")
    elif corpus.has_step("dedup"):
        import shutil

        shutil.rmtree(f"{corpus.root}/steps/dedup")  # a recipe without dedup must not inherit old decisions
        meta = corpus.read_meta()
        meta.get("steps", {}).pop("dedup", None)
        corpus.write_meta(meta)
    report.skipped = tuple(skipped)
    return report
