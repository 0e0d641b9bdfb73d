"""The dedup run: each phase a step on the contract (:mod:`xgen_data.execute.contract`), run in order on one
executor over every part of every subset; the last step commits the attribute files with one atomic registry
write.

Phases and their work files under ``work/dedup/`` (each step's commit writes what the next one reads):
signatures (:class:`.signatures.SignatureStep`, per part: ``sig/``, ``bands/``), exact duplicates
(:class:`.exact.ExactStep`, per hash shard: ``exact.npy``), bands (:class:`.bands.BandStep`, per group of
bands: ``pairs/`` or ``near_edges.npy``; near runs only), verify + cluster (:class:`.cluster.ClusterStep`, per
pair shard: ``cluster.npy``), attribute files (:func:`.attribute_files.attribute_file`, per part).
"""
from __future__ import annotations

import os
import time

import numpy as np

from xgen_data.attributes import minhash
from xgen_data.attributes.dedup.attribute_files import attribute_file
from xgen_data.attributes.dedup.bands import BandStep, doc_offsets
from xgen_data.attributes.dedup.cluster import ClusterStep, cluster_dense_path
from xgen_data.attributes.dedup.exact import ExactStep, exact_dense_path
from xgen_data.attributes.dedup.params import RECIPE_KEYS, DedupParams, DedupReport, is_int, resolve_params
from xgen_data.attributes.dedup.signatures import part_task, run_signatures
from xgen_data.attributes.part_step import PartAttributeStep
from xgen_data.errors import InputError
from xgen_data.execute import executors
from xgen_data.execute.contract import Executor, StepReport, run_step
from xgen_data.store import fsutil
from xgen_data.store.corpus import Corpus, CorpusError


def run_dedup(corpus_dir: str, *, threshold: float = 0.7, num_perm: int = 256, ngram: int = 5, seed: int = 1,
              bands: int | None = None, rows: int | None = None, exact: bool = True, near: bool = True,
              workers: int = 2, progress: bool = True, scheme: str = minhash.DEFAULT_SCHEME,
              clustering: str = "cliques", update=None,
              executor: Executor | str | None = None, ray_address: str | None = None) -> DedupReport:
    """Find exact and near duplicates across all subsets and commit the ``dedup`` attributes (package docstring).

    An attribute step: it computes clusters, nothing else. Which copy a recipe keeps, the corpus's default
    decisions and the decision report belong to the layer above (:mod:`xgen_data.mixing.defaults`,
    :mod:`xgen_data.mixing.pipeline`), which passes ``update`` to change the same atomic registry write.

    Args:
        corpus_dir: a corpus made by ``xgen ingest``.
        threshold: Jaccard threshold the LSH banding is tuned for (SPEC §2: 0.7).
        num_perm: MinHash permutations (SPEC §2: 256). ngram: words per shingle (SPEC §2: 5).
        seed: permutation seed (datasketch's ``seed``).
        bands, rows: LSH banding; default from ``threshold`` (see :func:`resolve_params`).
        exact, near: run exact (content hash) and/or near (MinHash LSH) detection. With both off every
            document is written as kept (old decisions are replaced).
        workers: processes of the local executor (CPUs of a local Ray).
        progress: show a progress bar for the signature phase.
        scheme: datasketch permutation scheme (``affine32`` = datasketch 2.0's default).
        clustering: ``cliques`` (verified candidates, every two members of a cluster within ``threshold``:
            :func:`clique_clusters`) or ``components`` (StarCoder's connected components, unverified).
        update: ``update(meta)`` changes the registry write that commits the set (e.g. the default decisions).
        executor: runs every phase's items: an executor, or a name for
            :func:`xgen_data.execute.executors.make_executor` (``"local"``, the default: ``workers`` processes;
            ``"ray"``: a local Ray of ``workers`` CPUs, or the cluster at ``ray_address``; the corpus must be on
            a filesystem every worker sees). The attribute files are the same bytes on every executor.
    Returns:
        A :class:`DedupReport`, with one :class:`~xgen_data.execute.contract.StepReport` per phase in ``steps``.
    Raises:
        CorpusError: ``corpus_dir`` is not a corpus; DamagedPartError: a damaged part. InputError: a bad
        parameter (see :func:`resolve_params`) or ``workers < 1``. ItemError: an item failed (nothing committed).
    """
    t_start = time.time()
    params = resolve_params(threshold, num_perm, ngram, seed, bands, rows, scheme, exact, near, clustering)
    if not is_int(workers) or workers < 1:
        raise InputError(f"workers must be an integer >= 1, got {workers!r}")
    if not os.path.isdir(corpus_dir):
        raise CorpusError(f"{corpus_dir}: no such corpus directory")
    own = executor is None or isinstance(executor, str)
    if own:
        executors.check_executor(executor or "local", ray_address)
    corpus = Corpus(corpus_dir)
    with corpus.lock():
        corpus.remove_unregistered()
        corpus.verify_parts()
        report = _new_report(corpus, params)
        if report.documents == 0:
            _commit_empty(corpus, params, update)
        else:
            runner = executors.make_executor(executor or "local", workers, ray_address) if own else executor
            try:
                _run_phases(corpus, params, runner, progress, update, report)
            finally:
                if own:
                    runner.close()
        report.seconds = time.time() - t_start
    return report


def attr_params(params: DedupParams) -> dict:
    """The ``dedup`` attribute set's key of ``params``."""
    return {k: getattr(params, k) for k in RECIPE_KEYS}


def _new_report(corpus: Corpus, params: DedupParams) -> DedupReport:
    """The run's report with its parameters and document counts (per subset) filled in."""
    report = DedupReport(corpus=corpus.root, params={**params.__dict__, "lsh_threshold": params.lsh_threshold})
    offsets = doc_offsets(corpus)
    report.documents = int(offsets[-1])
    for p, c in zip(corpus.parts(), np.diff(offsets).tolist()):
        report.documents_per_subset[p.subset] = report.documents_per_subset.get(p.subset, 0) + c
    return report


def _commit_empty(corpus: Corpus, params: DedupParams, update) -> None:
    """A corpus without documents: an empty generation, committed."""
    key = attr_params(params)
    corpus.commit_attributes("dedup", key, corpus.new_generation("dedup", key), corpus.parts_fingerprint(), update)


def _phase(report: DedupReport, name: str, step, executor: Executor, progress=None) -> StepReport:
    """Run ``step`` on ``executor`` (``progress(result)`` in this process per item), record its
    :class:`StepReport` in ``report.steps`` and its seconds as phase ``name``."""
    t = time.time()
    step_report = run_step(step, executor, progress)
    report.steps.append(step_report)
    report.seconds_by_phase[name] = time.time() - t
    return step_report


def _run_phases(corpus: Corpus, params: DedupParams, runner: Executor, progress: bool, update,
                report: DedupReport) -> None:
    """The phases in order (module docstring), filling ``report``; the last one commits the attributes."""
    work = os.path.join(corpus.root, "work", "dedup")
    parts = corpus.parts()
    tasks = [part_task(p, work, params) for p in parts]
    sig_paths = [t["sig"] for t in tasks]
    offsets = doc_offsets(corpus)

    t = time.time()
    stats = run_signatures(tasks, runner, progress, report.steps)
    report.signature_parts_reused = sum(s["reused"] for s in stats)
    report.signature_cpu_seconds = sum(s["cpu_seconds"] for s in stats)
    report.seconds_by_phase["signatures"] = time.time() - t

    exact = ExactStep(sig_paths, offsets, work)
    _phase(report, "exact", exact, runner)
    report.exact_groups, report.exact_group_documents = exact.groups, exact.members
    pair_paths, edges_path = [], None
    if params.near:
        report.no_word_documents = exact.no_words
        band = BandStep([t["bands"] for t in tasks], offsets, work, params.bands, params.clustering)
        _phase(report, "bands", band, runner)
        report.near_buckets, report.near_edges = band.buckets, band.edges
        pair_paths, edges_path = band.pair_paths, band.edges_path

    cluster = ClusterStep(pair_paths, sig_paths, offsets, work, params, exact.shard_paths, edges_path)
    _phase(report, "clusters", cluster, runner)
    report.clusters, report.clustered_documents = cluster.clusters, cluster.clustered_documents
    report.verified_pairs = cluster.verified

    files = PartAttributeStep("dedup", attribute_file, corpus, attr_params(params),
                              (exact_dense_path(work), cluster_dense_path(work)), verify=False, update=update,
                              part_args=lambda i, part: (sig_paths[i], int(offsets[i])), crash_in_items=False)
    first = []  # commit point dedup.part_written: in this process after the first file, whichever worker wrote it

    def written(result) -> None:
        if not first:
            first.append(result)
            fsutil.crash_point("dedup.part_written")

    _phase(report, "write", files, runner, written).step = "dedup attribute files"
