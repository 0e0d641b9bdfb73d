"""The corpus's default decisions: what the stand-alone ``xgen filter`` and ``xgen dedup`` record.

Each computes the attribute sets it needs (:mod:`xgen_data.attributes`) and records its settings as
``default_decisions`` in the same atomic registry write that commits them; the ``documents`` view without a
recipe shows these decisions (:func:`xgen_data.mixing.decisions.from_defaults`). Recipes never read them.
"""
from __future__ import annotations

import contextlib
import os
import time

from xgen_data.attributes import filters, language_step
from xgen_data.attributes.dedup.params import DedupReport, recorded_params
from xgen_data.attributes.dedup.run import run_dedup as compute_dedup_attributes
from xgen_data.attributes.licenses import default_allow_list
from xgen_data.errors import InputError
from xgen_data.execute import executors
from xgen_data.mixing import decisions, reports
from xgen_data.store.corpus import Corpus, CorpusError

MIN_TOKENS = filters.MIN_TOKENS


def filter_params(min_tokens: int, license_subsets, allow, policies: dict | None = None) -> dict:
    """The filter settings a stand-alone run records as the corpus default (``default_decisions.filter``);
    ``policies``: ``{subset: LicensePolicy}`` (recorded as :func:`xgen_data.mixing.decisions.policies_of` reads it)."""
    out = {"min_tokens": min_tokens, "license_subsets": sorted(license_subsets),
           "allow": sorted(default_allow_list() if allow is None else allow)}
    if policies:
        out["policies"] = {s: {"name": p.name, "allow": sorted(set(p.allow)), "labels_must_agree": p.labels_must_agree}
                           for s, p in sorted(policies.items())}
    return out


def run_filters(corpus_dir: str, min_tokens: int = MIN_TOKENS, license_subsets: tuple[str, ...] = ("code",),
                allow: tuple[str, ...] | None = None, policies: dict | None = None, workers: int = 1,
                executor: str = "local", ray_address: str | None = None) -> reports.FilterReport:
    """Set the corpus's default filter decisions (``xgen filter``) and compute what they need.

    Computes the ``license`` attributes for ``allow`` when not current (:func:`compute_license_attributes`) and
    records ``{min_tokens, license_subsets, allow}`` as ``default_decisions.filter`` in the same registry write;
    the ``documents`` view without a recipe then shows these decisions for every subset. Recipes never read
    the defaults: they carry their own settings.

    Args:
        min_tokens: documents with fewer tokens are dropped (SPEC §2: 100).
        license_subsets: subsets held to the license allow-list (code).
        allow: SPDX identifiers that pass; default the shipped list (:mod:`xgen_data.attributes.licenses`).
        policies: ``{subset: LicensePolicy}`` to hold subsets to named policies instead (``xgen filter
            --recipe R``: the recipe's, e.g. starcoder ``strict``); ``license_subsets`` are then its keys.
        workers, executor, ray_address: where the per-part attribute items run
            (:func:`xgen_data.execute.executors.make_executor`; ``workers=1`` locally: this process); the
            attribute files are the same bytes on every executor.
    Returns:
        the drops under the new defaults (:func:`xgen_data.mixing.reports.filter_report`), with the
        :class:`~xgen_data.execute.contract.StepReport` of each attribute step run now in ``steps``.
    Raises:
        CorpusError: ``corpus_dir`` is not a corpus; DamagedPartError: a damaged part; ValueError:
        ``min_tokens < 0``.
    """
    if min_tokens < 0:
        raise InputError(f"min_tokens must be >= 0, got {min_tokens}")
    executors.check_executor(executor, ray_address)
    corpus = Corpus(corpus_dir)
    settings = filter_params(min_tokens, tuple(policies) if policies else license_subsets, allow, policies)

    def update(meta: dict) -> None:
        meta.setdefault("default_decisions", {})["filter"] = settings

    with corpus.lock(), contextlib.closing(executors.make_executor(executor, workers, ray_address)) as pool:
        corpus.remove_unregistered()  # leftovers of killed runs
        corpus.verify_parts()
        steps = [filters.compute_license_attributes(corpus, pol.allow, labels_must_agree=pol.labels_must_agree,
                                                    verify=False, executor=pool)
                 for pol in (policies or {}).values()]  # each policy's set first; the write below commits the defaults
        steps.append(filters.compute_license_attributes(corpus, settings["allow"], update, verify=False, executor=pool))
        steps.append(language_step.compute_language_attributes(corpus, verify=False, executor=pool))
        report = reports.filter_report(corpus_dir, decisions.from_defaults(corpus))
        report.steps = [s for s in steps if s is not None]
        return report


def run_dedup(corpus_dir: str, *, license_allow: tuple[str, ...] | list[str] | None = None,
              set_default: bool = True, dec=None, **kw) -> DedupReport:
    """``xgen dedup``: compute the ``dedup`` attributes (:func:`xgen_data.attributes.dedup.run.run_dedup`, whose
    keyword arguments ``kw`` takes) and the ``license`` attributes of ``license_allow`` (the keep rule's tiers),
    then report the removals under ``dec``.

    With ``set_default`` the parameters and ``license_allow`` become the corpus's default dedup decisions
    (``default_decisions.dedup``) in the registry write that commits the clusters. The report's removals,
    largest clusters and license conflicts describe ``dec`` (default: the corpus defaults after the run;
    :func:`xgen_data.mixing.reports.dedup_report`).

    Args:
        license_allow: the license filter's allow-list, which makes the top tiers of the keep policy
            (:func:`xgen_data.attributes.licenses.license_rank`); default the shipped list.
    Raises:
        CorpusError: ``corpus_dir`` is not a corpus; DamagedPartError: a damaged part. ValueError: a bad
        parameter (:func:`xgen_data.attributes.dedup.params.resolve_params`) or ``workers < 1``.
    """
    t0 = time.time()
    if isinstance(license_allow, str):
        raise InputError("license_allow must be a list of SPDX identifiers, not a string")
    allow = tuple(default_allow_list()) if license_allow is None else tuple(license_allow)
    if not os.path.isdir(corpus_dir):
        raise CorpusError(f"{corpus_dir}: no such corpus directory")
    if isinstance(kw.get("executor"), str):  # refused before anything changes (e.g. Ray not installed)
        executors.check_executor(kw["executor"], kw.get("ray_address"))
    keys = {k: v for k, v in kw.items() if k not in ("workers", "progress", "executor", "ray_address")}
    recorded = recorded_params(license_allow=allow, **keys)

    def update(meta: dict) -> None:
        meta.setdefault("default_decisions", {})["dedup"] = recorded

    corpus = Corpus(corpus_dir)
    with corpus.lock():
        corpus.remove_unregistered()
        corpus.verify_parts()
        license_step = filters.compute_license_attributes(corpus, allow, verify=False)  # the keep rule's tiers
        report = compute_dedup_attributes(corpus_dir, update=update if set_default else None, **kw)
        report.params["license_allow"] = list(allow)
        report.steps[:0] = [license_step] if license_step is not None else []
        if not report.documents:
            return report
        t = time.time()
        reports.dedup_report(report, corpus_dir, decisions.from_defaults(corpus) if dec is None else dec)
        report.seconds_by_phase["report"] = time.time() - t
        report.seconds = time.time() - t0
    return report
