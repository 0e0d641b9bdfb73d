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

from dataclasses import dataclass
from typing import Any

from xgen_data.attributes import decontam, filters
from xgen_data.mixing import decisions
from xgen_data.store.corpus import Corpus
from xgen_data.mixing.recipe import Recipe


@dataclass
class StepsReport:
    """What the flow did for one recipe.

    ``filter``: the recipe's filter drops (derived, always given); ``dedup``: the dedup report when the dedup
    attributes were computed (None: not asked for, or up to date); ``ran``: the attribute steps computed now;
    ``skipped``: those already current (``"filter"`` = the license attributes of every policy the recipe
    names and the ``language`` attributes, ``"dedup"``).
    """

    filter: Any = None
    dedup: Any = None
    ran: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()
    decisions: Any = None


def dedup_params(recipe: Recipe) -> dict:
    """The dedup decision parameters of this recipe (attribute parameters plus the keep rule's allow-list)."""
    from xgen_data.attributes import dedup

    return dedup.recorded_params(license_allow=recipe.allow_list(), **recipe.dedup_kwargs())


def apply_recipe_steps(corpus_dir: str, recipe: Recipe, workers: int = 2, progress: bool = True,
                       force: bool = False, executor: str = "local", ray_address: str | None = None) -> StepsReport:
    """Compute the recipe's missing or stale attribute sets (``force``: recompute them), under the corpus lock.

    The corpus parts are verified against their recorded SHA-256 first. The corpus's default decisions
    (stand-alone ``xgen filter`` / ``xgen dedup``) are never changed. ``executor`` / ``ray_address`` say where
    dedup's signature phase runs (:func:`xgen_data.attributes.dedup.run_dedup`); the license and language
    attributes run in this process.

    Raises:
        CorpusError: not a corpus; DamagedPartError: a damaged part; ValueError: invalid step parameters.
    """
    corpus = Corpus(corpus_dir)
    with corpus.lock():
        return _apply(corpus, corpus_dir, recipe, workers, progress, force, executor, ray_address)


def _apply(corpus: Corpus, corpus_dir: str, recipe: Recipe, workers: int, progress: bool, force: bool,
           executor: str = "local", ray_address: str | None = None) -> StepsReport:
    dec = decisions.from_recipe(recipe)
    report = StepsReport(decisions=dec)
    ran, skipped = [], []
    corpus.remove_unregistered()
    corpus.verify_parts()
    allow = recipe.allow_list()
    # the base allow-list (dedup's keep tier, subsets held to no policy), then each policy's set
    sets = list(dict.fromkeys((a, lab) for a, lab in [(tuple(sorted(set(allow))), False)]
                              + [(tuple(p["allow"]), p["labels_must_agree"]) for p in dec.filter["policies"].values()]))
    computed = False
    for set_allow, labels in sets:
        key = decisions.license_params(set_allow, labels)
        if force or not corpus.attribute_current("license", key):
            if force:
                meta = corpus.read_meta()
                meta.get("attributes", {}).pop(corpus.attribute_key("license", key), None)
                corpus.write_meta(meta)
            filters.compute_license_attributes(corpus, set_allow, verify=False, labels_must_agree=labels)
            computed = True
    from xgen_data.attributes import languages

    computed = languages.compute_language_attributes(corpus, verify=False) or computed
    if recipe.decontaminate:
        computed = decontam.compute_decontam_attributes(corpus, recipe.decontaminate, verify=False) or computed
    (ran if computed else skipped).append("filter")
    if dec.dedup is not None:
        if force or not corpus.attribute_current("dedup", decisions.dedup_attr_params(dec.dedup)):
            from xgen_data.attributes import dedup

            report.dedup = dedup.run_dedup(corpus_dir, workers=workers, progress=progress, license_allow=allow,
                                           set_default=False, dec=dec, executor=executor, ray_address=ray_address,
                                           **recipe.dedup_kwargs())
            ran.append("dedup")
        else:
            skipped.append("dedup")
    report.filter = filters.report(corpus_dir, dec)
    report.ran, report.skipped = tuple(ran), tuple(skipped)
    return report


def plan_recipe(corpus_dir: str, recipe: Recipe, workers: int = 2, progress: bool = True, executor: str = "local",
                ray_address: str | None = None):
    """Recipe steps, then the kept documents per recipe subset, under one corpus lock.

    Returns ``(StepsReport, {subset: SubsetDocs})`` for :func:`xgen_data.mixing.mixture.plan`.
    """
    from xgen_data.shards import packing

    corpus = Corpus(corpus_dir)
    with corpus.lock():
        steps = apply_recipe_steps(corpus_dir, recipe, workers, progress, executor=executor, ray_address=ray_address)
        return steps, packing.kept_documents(corpus_dir, recipe.subsets(), recipe)


def build_recipe(corpus_dir: str, recipe: Recipe, out_dir: str, workers: int = 2, progress: bool = True,
                 executor: str = "local", ray_address: str | None = None):
    """Recipe steps, then :func:`xgen_data.shards.packing.build`, under one corpus lock (no other command can
    change the attributes between the check and the packing). Returns ``(StepsReport, BuildReport)``."""
    from xgen_data.shards import packing

    corpus = Corpus(corpus_dir)
    packing.check_out_dir(out_dir, corpus)  # fail before any step runs
    with corpus.lock():
        steps = apply_recipe_steps(corpus_dir, recipe, workers, progress, executor=executor, ray_address=ray_address)
        return steps, packing.build(corpus_dir, recipe, out_dir, progress=progress)
