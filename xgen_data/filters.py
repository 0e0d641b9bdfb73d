"""Document filters (SPEC §2): too few tokens, and code whose license is not on the permissive allow-list.

Runs per corpus part and writes ``steps/filter/<subset>/<part>.parquet`` with columns ``id`` (string) and
``drop_reason`` (string; null = kept). Reasons: ``too_few_tokens`` (fewer than ``min_tokens`` tokens after
tokenization) and ``license_not_permissive`` (only for subsets named in ``license_subsets``). The first
matching rule, in that order, gives the reason.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq

from xgen_data import fsutil, licenses
from xgen_data.corpus import Corpus

MIN_TOKENS = 100
REASON_SHORT = "too_few_tokens"
REASON_LICENSE = "license_not_permissive"
FILTER_SCHEMA = pa.schema([("id", pa.string()), ("drop_reason", pa.string())])


@dataclass
class FilterReport:
    """Documents seen and dropped per ``(subset, reason)``."""

    n_docs: int = 0
    dropped: collections.Counter = field(default_factory=collections.Counter)
    missing_license_subsets: tuple[str, ...] = ()  # license_subsets with no documents (a typo?)
    dropped_licenses: collections.Counter = field(default_factory=collections.Counter)  # (subset, license) -> docs


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


def params(min_tokens: int, license_subsets, allow) -> dict:
    """The parameters a filter run records in ``corpus.json`` (compared by the recipe flow)."""
    from xgen_data.licenses import default_allow_list

    return {"min_tokens": min_tokens, "license_subsets": sorted(license_subsets),
            "allow": sorted(default_allow_list() if allow is None else allow)}


def run_filters(corpus_dir: str, min_tokens: int = MIN_TOKENS, license_subsets: tuple[str, ...] = ("code",),
                allow: tuple[str, ...] | None = None) -> FilterReport:
    """Apply the filters to every part of the corpus, replacing earlier filter decisions atomically.

    Args:
        min_tokens: documents with fewer tokens are dropped (SPEC §2: 100).
        license_subsets: subsets held to the license allow-list (code).
        allow: SPDX identifiers that pass; default the shipped list (:mod:`xgen_data.licenses`).
    Raises:
        CorpusError: ``corpus_dir`` is not a corpus; ValueError: ``min_tokens < 0``.
    """
    if min_tokens < 0:
        raise ValueError(f"min_tokens must be >= 0, got {min_tokens}")
    corpus = Corpus(corpus_dir)
    report = FilterReport()
    with corpus.lock():
        for part in corpus.parts():
            _filter_part(corpus, part, min_tokens, license_subsets, allow, report)
        corpus.record_step("filter", params(min_tokens, license_subsets, allow))
        report.missing_license_subsets = tuple(sorted(set(license_subsets) - set(corpus.subsets())))
    return report


def _filter_part(corpus, part, min_tokens, license_subsets, allow, report: FilterReport) -> None:
    """Decide one part and write its ``steps/filter`` table atomically."""
    table = pq.read_table(part.path, columns=["id", "n_tokens", "license"])
    lic_col = table.column("license").combine_chunks()
    reasons = decide(table.column("n_tokens").to_numpy(), lic_col, part.subset in license_subsets, min_tokens, allow)
    out = pa.table({"id": table.column("id"), "drop_reason": reasons}, schema=FILTER_SCHEMA)
    with fsutil.atomic_path(corpus.step_path("filter", part)) as tmp:
        pq.write_table(out, tmp, compression="zstd")
    report.n_docs += table.num_rows
    report.dropped.update((part.subset, r) for r in reasons.drop_null().to_pylist())
    by_license = lic_col.filter(pa.compute.equal(reasons, REASON_LICENSE).fill_null(False)).value_counts()
    report.dropped_licenses.update({(part.subset, v["values"]): v["counts"] for v in by_license.to_pylist()})
