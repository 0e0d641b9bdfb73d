"""The dedup run: the phases in order over every part of every subset, then one atomic commit."""
from __future__ import annotations

import os
import time

import duckdb
import numpy as np
import pyarrow as pa

from xgen_data.attributes import minhash
from xgen_data.attributes.dedup.attribute_files import write_attribute_files
from xgen_data.attributes.dedup.bands import doc_offsets
from xgen_data.attributes.dedup.cluster import cluster_documents
from xgen_data.attributes.dedup.params import RECIPE_KEYS, DedupReport, is_int, resolve_params, sql_list
from xgen_data.attributes.dedup.signatures import part_task, run_signatures
from xgen_data.errors import InputError
from xgen_data.execute.contract import Executor
from xgen_data.execute import executors
from xgen_data.store.corpus import Corpus, CorpusError
from xgen_data.store import query_guard
from xgen_data.store.duckdb_settings import duckdb_config, spill_cap


def run_dedup(corpus_dir: str, *, threshold: float = 0.7, num_perm: int = 256, ngram: int = 5, seed: int = 1,
              bands: int | None = None, rows: int | None = None, exact: bool = True, near: bool = True,
              workers: int = 2, progress: bool = True, scheme: str = minhash.DEFAULT_SCHEME,
              memory_limit: str | None = None, clustering: str = "cliques", update=None,
              executor: Executor | str | None = None, ray_address: str | None = None) -> DedupReport:
    """Find exact and near duplicates across all subsets and commit the ``dedup`` attributes (module docstring).

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
        workers: signature worker processes and DuckDB threads.
        progress: show a progress bar for the signature phase.
        scheme: datasketch permutation scheme (``affine32`` = datasketch 2.0's default).
        memory_limit: DuckDB's memory limit (default :func:`xgen_data.store.duckdb_settings.memory_limit`); beyond
            it DuckDB spills to ``work/dedup/duckdb.tmp``.
        clustering: ``cliques`` (verified candidates, every two members of a cluster within ``threshold``:
            :func:`clique_clusters`) or ``components`` (StarCoder's connected components, unverified).
        update: ``update(meta)`` changes the registry write that commits the set (e.g. the default decisions).
        executor: runs phase 1's per-part items (:class:`~xgen_data.attributes.dedup.signatures.SignatureStep`):
            an executor, or a name for :func:`xgen_data.execute.executors.make_executor` (``"local"``, the
            default: ``workers`` processes; ``"ray"``: a local Ray of ``workers`` CPUs, or the cluster at
            ``ray_address``; the corpus must be on a filesystem every worker sees). The attribute files are the
            same bytes on every executor.
    Returns:
        A :class:`DedupReport`.
    Raises:
        CorpusError: ``corpus_dir`` is not a corpus; DamagedPartError: a damaged part. ValueError: a bad
        parameter (see :func:`resolve_params`) or ``workers < 1``.
    """
    t_start = time.time()
    params = resolve_params(threshold, num_perm, ngram, seed, bands, rows, scheme, exact, near, clustering)
    if not is_int(workers) or workers < 1:
        raise InputError(f"workers must be an integer >= 1, got {workers!r}")
    if not os.path.isdir(corpus_dir):
        raise CorpusError(f"{corpus_dir}: no such corpus directory")
    if executor is None or isinstance(executor, str):
        executors.check_executor(executor or "local", ray_address)
    corpus = Corpus(corpus_dir)
    attr_key = {k: getattr(params, k) for k in RECIPE_KEYS}
    with corpus.lock():
        corpus.remove_unregistered()
        parts = corpus.parts()
        work = os.path.join(corpus.root, "work", "dedup")
        tasks = [part_task(p, work, params) for p in parts]
        corpus.verify_parts(parts)
        fingerprint = corpus.parts_fingerprint()
        report = DedupReport(corpus=corpus.root, params={**params.__dict__, "lsh_threshold": params.lsh_threshold})
        phase: dict[str, float] = {}

        # -- numbering: document d of part k is offsets[k] + row ------------------------------------------
        offsets = doc_offsets(corpus)
        counts = np.diff(offsets).tolist()
        n_docs = int(offsets[-1])
        report.documents = n_docs
        for p, c in zip(parts, counts):
            report.documents_per_subset[p.subset] = report.documents_per_subset.get(p.subset, 0) + c
        if not parts:
            report.seconds = time.time() - t_start
            corpus.commit_attributes("dedup", attr_key, corpus.new_generation("dedup", attr_key), fingerprint, update)
            return report

        # -- phase 1: signatures ---------------------------------------------------------------------------
        t = time.time()
        own = executor is None or isinstance(executor, str)
        runner = executors.make_executor(executor or "local", workers, ray_address) if own else executor
        try:
            stats = run_signatures(tasks, runner, progress)
        finally:
            if own:
                runner.close()  # the workers' memory goes before the main phases
        report.signature_parts_reused = sum(s["reused"] for s in stats)
        report.signature_cpu_seconds = sum(s["cpu_seconds"] for s in stats)
        phase["signatures"] = time.time() - t

        # -- phase 2: DuckDB over the work files -------------------------------------------------------------
        t = time.time()
        tmp_dir = os.path.join(work, "duckdb.tmp")
        os.makedirs(tmp_dir, exist_ok=True)
        con = duckdb.connect(config={**duckdb_config(tmp_dir, memory_limit), "threads": workers,
                                     "preserve_insertion_order": False})
        try:
            with query_guard.guard(con, spill_folder=tmp_dir, spill_cap=spill_cap(tmp_dir),
                                   what="dedup's DuckDB phase"):  # Ctrl-C and the spill cap stop it
                con.register("_parts", pa.table({
                    "pidx": pa.array(range(len(parts)), pa.int32()),
                    "subset": [p.subset for p in parts], "name": [p.name for p in parts],
                    "docs_path": [p.path for p in parts], "sig_path": [tk["sig"] for tk in tasks],
                    "band_path": [tk["bands"] for tk in tasks], "doff": pa.array(offsets[:-1], pa.int64())}))
                con.execute("CREATE TEMP TABLE parts AS SELECT * FROM _parts")
                con.execute(f"""CREATE TEMP VIEW sig AS SELECT p.doff + s.row AS doc, s.chash, s.n_words
                    FROM read_parquet({sql_list([tk['sig'] for tk in tasks])}, filename=true) s
                    JOIN parts p ON s.filename = p.sig_path""")
                con.execute(f"""CREATE TEMP VIEW docs AS SELECT p.doff + d.file_row_number AS doc, p.subset, d.id,
                        d.license, d.source, d.path
                    FROM read_parquet({sql_list([p.path for p in parts])}, filename=true, file_row_number=true) d
                    JOIN parts p ON d.filename = p.docs_path""")
                # exact groups (always counted: the license-conflict report needs them)
                con.execute("""CREATE TEMP TABLE exact_members AS SELECT doc, chash, min(doc) OVER w AS gid,
                        count(*) OVER w AS gsize FROM sig WINDOW w AS (PARTITION BY chash) QUALIFY gsize > 1""")
                report.exact_groups, report.exact_group_documents = con.execute(
                    "SELECT count(DISTINCT gid), count(*) FROM exact_members").fetchall()[0]
                if params.near:
                    report.no_word_documents = con.execute(
                        "SELECT count(*) FROM sig WHERE n_words = 0").fetchall()[0][0]
                phase["exact"] = time.time() - t

                # -- union-find over exact and near edges ------------------------------------------------------
                t = time.time()
                member, cluster = cluster_documents(con, report, params, tasks, offsets, n_docs)
                con.register("_clustered", pa.table({"doc": pa.array(member, pa.int64()),
                                                     "cluster": pa.array(cluster, pa.int64())}))
                del member, cluster
                phase["clusters"] = time.time() - t

                # -- attributes per part: cluster, exact group, content hash (no recipe threshold involved) ------
                t = time.time()
                gen = corpus.new_generation("dedup", attr_key)
                write_attribute_files(con, corpus, gen, parts, [tk["sig"] for tk in tasks], offsets)
                phase["write"] = time.time() - t
        finally:
            con.close()
        corpus.commit_attributes("dedup", attr_key, gen, fingerprint, update)
        report.seconds_by_phase = phase
        report.seconds = time.time() - t_start
    return report
