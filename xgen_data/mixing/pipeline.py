"""The recipe flow: compute the attribute sets a recipe needs (license, dedup) when missing or stale.

A recipe's decisions are derived from attributes by SQL (:mod:`xgen_data.mixing.decisions`), so the flow only
computes attributes: the ``license`` attributes of the recipe's allow-list and, when ``[dedup] enabled``, the
``dedup`` attributes of its dedup parameters. Each set is committed in ``corpus.json`` with the content
fingerprint of the parts it read (:meth:`xgen_data.store.corpus.Corpus.commit_attributes`); a set is current when
that fingerprint equals today's, whatever other recipes or stand-alone commands ran in between (their sets
coexist under other keys). ``xgen mix plan``, ``xgen mix build`` and ``xgen demo`` all go through
:func:`apply_recipe_steps`, so a plan always describes the documents the build packs.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from xgen_data.attributes import decontam, filters, language_step
from xgen_data.attributes.dedup.params import dedup_attr_params, recorded_params
from xgen_data.attributes.dedup.run import run_dedup
from xgen_data.attributes.licenses import license_params
from xgen_data.execute import executors
from xgen_data.mixing import decisions, reports, selection
from xgen_data.mixing.recipe import Recipe
from xgen_data.store.corpus import Corpus


@dataclass
class StepsReport:
    """What the flow did for one recipe.

    ``filter``: the recipe's filter drops (derived, always given); ``dedup``: the dedup report when the dedup
    attributes were computed (None: not asked for, or up to date); ``ran``: the attribute steps computed now;
    ``skipped``: those already current (``"filter"`` = the license attributes of every policy the recipe
    names and the ``language`` attributes, ``"dedup"``); ``steps``: the
    :class:`~xgen_data.execute.contract.StepReport` of every step run now, in run order (dedup's phases included).
    """

    filter: Any = None
    dedup: Any = None
    ran: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()
    decisions: Any = None
    steps: list = field(default_factory=list)


def dedup_params(recipe: Recipe) -> dict:
    """The dedup decision parameters of this recipe (attribute parameters plus the keep rule's allow-list)."""
    return recorded_params(license_allow=recipe.allow_list(), **recipe.dedup_kwargs())


def apply_recipe_steps(corpus_dir: str, recipe: Recipe, workers: int = 2, progress: bool = True,
                       force: bool = False, executor="local", ray_address: str | None = None) -> StepsReport:
    """Compute the recipe's missing or stale attribute sets (``force``: recompute them), under the corpus lock.

    The corpus parts are verified against their recorded SHA-256 first. The corpus's default decisions
    (stand-alone ``xgen filter`` / ``xgen dedup``) are never changed. ``executor`` / ``ray_address`` say where
    dedup's signature phase (:func:`xgen_data.attributes.dedup.run_dedup`) and the license and language
    attribute items run; with ``local`` the attribute items run in this process. The outputs are the same
    bytes on every executor.

    Raises:
        CorpusError: not a corpus; DamagedPartError: a damaged part; ValueError: invalid step parameters.
    """
    corpus = Corpus(corpus_dir)
    with corpus.lock():
        return _apply(corpus, corpus_dir, recipe, workers, progress, force, executor, ray_address)


def _apply(corpus: Corpus, corpus_dir: str, recipe: Recipe, workers: int, progress: bool, force: bool,
           executor="local", ray_address: str | None = None) -> StepsReport:
    dec = decisions.from_recipe(recipe)
    report = StepsReport(decisions=dec)
    ran, skipped = [], []
    corpus.remove_unregistered()
    corpus.verify_parts()
    with executors.command_executor(executor, workers, ray_address) as runner:  # one Ray for every step
        # with "local" the attribute items run in this process (one pass over a part each: cheaper than starting
        # a process pool per attribute set); the files are the same bytes on every executor
        local = isinstance(runner, str)
        with contextlib.closing(executors.make_executor("local", 1)) if local else contextlib.nullcontext(runner) \
                as pool:
            computed = _attributes(corpus, recipe, dec, force, pool, report)
        (ran if computed else skipped).append("filter")
        if dec.dedup is not None and (force or not corpus.attribute_current("dedup", dedup_attr_params(dec.dedup))):
            report.dedup = _dedup(corpus_dir, recipe, dec, workers, progress, runner, ray_address if local else None)
            report.steps += report.dedup.steps
            ran.append("dedup")
        elif dec.dedup is not None:
            skipped.append("dedup")
    report.filter = reports.filter_report(corpus_dir, dec)
    report.ran, report.skipped = tuple(ran), tuple(skipped)
    return report


def _dedup(corpus_dir: str, recipe: Recipe, dec, workers: int, progress: bool, runner, ray_address: str | None):
    """Run the recipe's dedup on ``runner`` and its decision report; returns the :class:`DedupReport`."""
    t = time.time()
    report = run_dedup(corpus_dir, workers=workers, progress=progress, executor=runner, ray_address=ray_address,
                       **recipe.dedup_kwargs())
    report.params["license_allow"] = list(recipe.allow_list())
    t_report = time.time()
    if report.documents:
        reports.dedup_report(report, corpus_dir, dec)
    report.seconds_by_phase["report"] = time.time() - t_report
    report.seconds = time.time() - t
    return report


def _attributes(corpus: Corpus, recipe: Recipe, dec, force: bool, pool, report: StepsReport) -> bool:
    """The recipe's license, language and decontamination attribute sets, each computed on ``pool`` unless
    current (all of them with ``force``; each computed step's report added to ``report.steps``); returns
    whether any was computed."""
    allow = recipe.allow_list()
    # the base allow-list (dedup's keep tier, subsets held to no policy), then each policy's set
    sets = list(dict.fromkeys((a, lab) for a, lab in [(tuple(sorted(set(allow))), False)]
                              + [(tuple(p["allow"]), p["labels_must_agree"]) for p in dec.filter["policies"].values()]))
    computed = False
    for set_allow, labels in sets:
        key = license_params(set_allow, labels)
        if force or not corpus.attribute_current("license", key):
            if force:
                meta = corpus.read_meta()
                meta.get("attributes", {}).pop(corpus.attribute_key("license", key), None)
                corpus.write_meta(meta)
            report.steps.append(filters.compute_license_attributes(corpus, set_allow, verify=False,
                                                                   labels_must_agree=labels, executor=pool))
            computed = True
    language = language_step.compute_language_attributes(corpus, verify=False, executor=pool)
    report.steps += [language] if language is not None else []
    computed = language is not None or computed
    if recipe.decontaminate:
        found = decontam.compute_decontam_attributes(corpus, recipe.decontaminate, verify=False, executor=pool)
        report.steps += [found] if found is not None else []
        computed = found is not None or computed
    return computed

def plan_recipe(corpus_dir: str, recipe: Recipe, workers: int = 2, progress: bool = True, executor: str = "local",
                ray_address: str | None = None):
    """Recipe steps, then the kept documents per recipe subset, under one corpus lock.

    Returns ``(StepsReport, {subset: SubsetDocs})`` for :func:`xgen_data.mixing.mixture.plan`.
    """
    corpus = Corpus(corpus_dir)
    with corpus.lock():
        steps = apply_recipe_steps(corpus_dir, recipe, workers, progress, executor=executor, ray_address=ray_address)
        return steps, selection.kept_documents(corpus_dir, recipe.subsets(), recipe)
