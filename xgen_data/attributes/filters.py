"""Document filters (SPEC §2): too few tokens, and code whose license is not on the permissive allow-list.

Reasons: ``too_few_tokens`` (fewer than ``min_tokens`` tokens after tokenization) and
``license_not_permissive`` (only for subsets named in ``license_subsets``); the first matching rule, in that
order, gives the reason (:func:`decide` is the rule as a pure function).

What is stored is an *attribute*, not a decision: per allow-list, the ``license`` step writes
``attributes/license/<hash>/<generation>/<subset>/<part>.parquet`` (``id, license_pass, license_reason,
license_tier``) for every document of every subset. Token counts are already in the docs parts. A recipe's
``min_tokens`` and ``license_subsets`` are applied by the SQL view of :mod:`xgen_data.mixing.decisions`, only to the
subsets the recipe packs.
"""
from __future__ import annotations

import functools
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq

from xgen_data.attributes import licenses
from xgen_data.attributes.part_step import PartAttributeStep, run_part_step
from xgen_data.execute.contract import Executor, ItemResult, StepReport
from xgen_data.store import fsutil
from xgen_data.store.corpus import Corpus

MIN_TOKENS = 100
REASON_SHORT = "too_few_tokens"
REASON_LICENSE = "license_not_permissive"


def decide(n_tokens, license_exprs, check_license: bool, min_tokens: int = MIN_TOKENS,
           allow: tuple[str, ...] | None = None) -> pa.Array:
    """Drop reason per document (null = kept); a pure function of the inputs (see module docstring).

    Args:
        n_tokens: int array-like ``[n]``; license_exprs: string array-like ``[n]`` (nulls allowed).
    Returns:
        a string ``pyarrow.Array`` of length ``n``. Licenses are parsed once per distinct expression.
    """
    n = np.asarray(n_tokens, dtype=np.int64)
    reasons = np.full(len(n), None, dtype=object)
    if check_license:
        lic = pa.array(license_exprs, pa.string()).dictionary_encode()
        passes = np.array([licenses.license_passes(x, allow) for x in lic.dictionary.to_pylist()] + [False])
        codes = lic.indices.fill_null(len(lic.dictionary)).to_numpy(zero_copy_only=False)
        reasons[~passes[codes]] = REASON_LICENSE
    reasons[n < min_tokens] = REASON_SHORT
    return pa.array(reasons, pa.string())


LICENSE_SCHEMA = pa.schema([("id", pa.string()), ("license_normalized", pa.string()), ("license_pass", pa.bool_()),
                            ("license_reason", pa.string()), ("license_tier", pa.int8())])


def compute_license_attributes(corpus: Corpus, allow, update=None, verify: bool = True,
                               labels_must_agree: bool = False, executor: Executor | None = None
                               ) -> StepReport | None:
    """Write and commit the ``license`` attributes of every part under one policy (one new generation).

    The set is keyed by the policy's allow-list and ``labels_must_agree``
    (:func:`xgen_data.attributes.licenses.license_params`). Per document: ``license_normalized``, ``license_pass`` and
    ``license_reason`` (:func:`xgen_data.attributes.licenses.decide`; with ``labels_must_agree`` the text's SPDX header
    is compared with the record's label) and ``license_tier`` (dedup's keep tier,
    :func:`xgen_data.attributes.licenses.license_rank`), for every subset: which subsets a recipe holds to which policy is a
    decision, not an attribute. Returns the step's :class:`StepReport`; skipped (returns None) when the set is
    already current (``update`` then changes the registry alone). Call under the corpus lock.

    Args:
        allow: SPDX identifiers that pass.
        update: ``update(meta)`` changes the same atomic registry write (the default decisions).
        labels_must_agree: policy ``strict``'s label check (reads the texts' first 4 KiB).
        verify: check the parts' SHA-256 first (:meth:`Corpus.verify_parts`).
        executor: runs the per-part items (:func:`license_part`; default this process).
    Raises:
        DamagedPartError: a part is damaged; ItemError: a part could not be read.
    """
    allow = tuple(allow)
    key = licenses.license_params(allow, labels_must_agree)
    if corpus.attribute_current("license", key):
        if update is not None:
            meta = corpus.read_meta()
            update(meta)
            corpus.write_meta(meta)
        return None
    step = PartAttributeStep("license", license_part, corpus, key, (allow, labels_must_agree), verify, update)
    return run_part_step(step, executor)


@functools.lru_cache(maxsize=65536)
def _license_row(label: str | None, head: str | None, allow: tuple[str, ...], labels_must_agree: bool) -> tuple:
    ok, norm, why = licenses.decide(label, licenses.LicensePolicy("set", allow, labels_must_agree), head)
    return norm, ok, why, licenses.license_rank(label, allow)


def license_part(part_path: str, out_path: str, crash_point: str | None, allow: tuple[str, ...],
                 labels_must_agree: bool) -> ItemResult:
    """The ``license`` attributes of one docs part (a work item of :func:`compute_license_attributes`).

    Reads ``id, license`` (and the texts' first 4 KiB for the SPDX header with ``labels_must_agree``) and
    writes ``out_path`` atomically (:data:`LICENSE_SCHEMA`), one row per document in the part's order.
    Returns the documents and bytes read.
    """
    t0 = time.time()
    table = pq.read_table(part_path, columns=["id", "license"] + (["text"] if labels_must_agree else []))
    if labels_must_agree:
        heads = [licenses.header_license(t) for t in table.column("text").to_pylist()]
        table = table.drop_columns(["text"])
    else:
        heads = [None] * table.num_rows
    rows = [_license_row(x, h, allow, labels_must_agree) for x, h in zip(table.column("license").to_pylist(), heads)]
    out = pa.table({"id": table.column("id"),
                    "license_normalized": pa.array([r[0] for r in rows], pa.string()),
                    "license_pass": pa.array([r[1] for r in rows], pa.bool_()),
                    "license_reason": pa.array([r[2] for r in rows], pa.string()),
                    "license_tier": pa.array([r[3] for r in rows], pa.int8())},
                   schema=LICENSE_SCHEMA)
    with fsutil.atomic_path(out_path) as tmp:
        pq.write_table(out, tmp, compression="zstd")
    if crash_point:
        fsutil.crash_point(crash_point)
    return ItemResult(out_path, documents=table.num_rows, bytes=table.nbytes, seconds=time.time() - t0)
