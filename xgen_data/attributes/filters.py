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

import collections
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq

from xgen_data.attributes import licenses
from xgen_data.errors import InputError
from xgen_data.store import fsutil
from xgen_data.store.corpus import Corpus

MIN_TOKENS = 100
REASON_SHORT = "too_few_tokens"
REASON_LICENSE = "license_not_permissive"


@dataclass
class FilterReport:
    """Documents seen and dropped per ``(subset, reason)``."""

    n_docs: int = 0
    dropped: collections.Counter = field(default_factory=collections.Counter)
    missing_license_subsets: tuple[str, ...] = ()  # license_subsets with no documents (a typo?)
    # (subset, license, policy's reason) -> documents
    dropped_licenses: collections.Counter = field(default_factory=collections.Counter)


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


def params(min_tokens: int, license_subsets, allow, policies: dict | None = None) -> dict:
    """The filter settings a stand-alone run records as the corpus default (``default_decisions.filter``);
    ``policies``: ``{subset: LicensePolicy}`` (recorded as :func:`xgen_data.mixing.decisions.policies_of` reads it)."""
    from xgen_data.attributes.licenses import default_allow_list

    out = {"min_tokens": min_tokens, "license_subsets": sorted(license_subsets),
           "allow": sorted(default_allow_list() if allow is None else allow)}
    if policies:
        out["policies"] = {s: {"name": p.name, "allow": sorted(set(p.allow)), "labels_must_agree": p.labels_must_agree}
                           for s, p in sorted(policies.items())}
    return out


def compute_license_attributes(corpus: Corpus, allow, update=None, verify: bool = True,
                               labels_must_agree: bool = False) -> bool:
    """Write and commit the ``license`` attributes of every part under one policy (one new generation).

    The set is keyed by the policy's allow-list and ``labels_must_agree``
    (:func:`xgen_data.mixing.decisions.license_params`). Per document: ``license_normalized``, ``license_pass`` and
    ``license_reason`` (:func:`xgen_data.attributes.licenses.decide`; with ``labels_must_agree`` the text's SPDX header
    is compared with the record's label) and ``license_tier`` (dedup's keep tier,
    :func:`xgen_data.attributes.dedup.license_rank`), for every subset: which subsets a recipe holds to which policy is a
    decision, not an attribute. Skipped (returns False) when the set is already current and ``update`` is
    None. Call under the corpus lock.

    Args:
        allow: SPDX identifiers that pass.
        update: ``update(meta)`` changes the same atomic registry write (the default decisions).
        labels_must_agree: policy ``strict``'s label check (reads the texts' first 4 KiB).
        verify: check the parts' SHA-256 first (:meth:`Corpus.verify_parts`).
    Raises:
        DamagedPartError: a part is damaged.
    """
    from xgen_data.attributes import dedup
    from xgen_data.mixing import decisions

    allow = tuple(allow)
    key = decisions.license_params(allow, labels_must_agree)
    policy = licenses.LicensePolicy("set", allow, labels_must_agree)
    if corpus.attribute_current("license", key):
        if update is not None:
            meta = corpus.read_meta()
            update(meta)
            corpus.write_meta(meta)
        return False
    parts, fingerprint, gen = corpus.start_attributes("license", key, verify)
    cache: dict = {}
    for i, part in enumerate(parts):
        table = pq.read_table(part.path, columns=["id", "license"] + (["text"] if labels_must_agree else []))
        if labels_must_agree:
            heads = [licenses.header_license(t) for t in table.column("text").to_pylist()]
            table = table.drop_columns(["text"])
        else:
            heads = None
        lic = table.column("license").to_pylist()
        rows = []
        for j, x in enumerate(lic):
            k = (x, heads[j] if heads is not None else None)
            if k not in cache:
                ok, norm, why = licenses.decide(x, policy, k[1])
                cache[k] = (norm, ok, why, dedup.license_rank(x, allow))
            rows.append(cache[k])
        out = pa.table({"id": table.column("id"),
                        "license_normalized": pa.array([r[0] for r in rows], pa.string()),
                        "license_pass": pa.array([r[1] for r in rows], pa.bool_()),
                        "license_reason": pa.array([r[2] for r in rows], pa.string()),
                        "license_tier": pa.array([r[3] for r in rows], pa.int8())},
                       schema=LICENSE_SCHEMA)
        with fsutil.atomic_path(corpus.attribute_path(gen, part)) as tmp:
            pq.write_table(out, tmp, compression="zstd")
        if i == 0:
            fsutil.crash_point("license.part_written")
    corpus.commit_attributes("license", key, gen, fingerprint, update)
    return True


def report(corpus_dir: str, dec) -> FilterReport:
    """Documents and filter drops per ``(subset, reason)`` under decisions ``dec`` (derived, nothing written)."""
    from xgen_data.stats import sql

    con = sql.connect(corpus_dir, dec=dec, quiet=True)
    rep = FilterReport(n_docs=con.execute("SELECT count(*) FROM documents").fetchone()[0])
    for subset, reason, n in con.execute(f"""SELECT subset, drop_reason, count(*) FROM documents
            WHERE drop_reason IN ('{REASON_SHORT}', '{REASON_LICENSE}') GROUP BY ALL""").fetchall():
        rep.dropped[(subset, reason)] = n
    for subset, lic, why, n in con.execute(f"""SELECT subset, license, license_reason, count(*) FROM documents
            WHERE drop_reason = '{REASON_LICENSE}' GROUP BY ALL""").fetchall():
        rep.dropped_licenses[(subset, lic, why)] = n
    subsets = set(Corpus(corpus_dir).subsets())
    rep.missing_license_subsets = tuple(sorted(set(dec.filter["license_subsets"]) - subsets)) if dec.filter else ()
    return rep


def run_filters(corpus_dir: str, min_tokens: int = MIN_TOKENS, license_subsets: tuple[str, ...] = ("code",),
                allow: tuple[str, ...] | None = None, policies: dict | None = None) -> FilterReport:
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
    Returns:
        the drops under the new defaults (:func:`report`).
    Raises:
        CorpusError: ``corpus_dir`` is not a corpus; DamagedPartError: a damaged part; ValueError:
        ``min_tokens < 0``.
    """
    from xgen_data.mixing import decisions

    if min_tokens < 0:
        raise InputError(f"min_tokens must be >= 0, got {min_tokens}")
    corpus = Corpus(corpus_dir)
    settings = params(min_tokens, tuple(policies) if policies else license_subsets, allow, policies)

    def update(meta: dict) -> None:
        meta.setdefault("default_decisions", {})["filter"] = settings

    with corpus.lock():
        corpus.remove_unregistered()  # leftovers of killed runs, and step files of the pre-attributes layout
        corpus.verify_parts()
        for pol in (policies or {}).values():  # each policy's set first; the registry write below commits the defaults
            compute_license_attributes(corpus, pol.allow, labels_must_agree=pol.labels_must_agree, verify=False)
        compute_license_attributes(corpus, settings["allow"], update, verify=False)
        from xgen_data.attributes import languages

        languages.compute_language_attributes(corpus, verify=False)
        return report(corpus_dir, decisions.from_defaults(corpus))
