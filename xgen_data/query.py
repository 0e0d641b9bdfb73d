"""The query layer: DuckDB views over the corpus for one set of decisions, taken as a value.

:func:`connect` opens a DuckDB connection with two views, ``documents`` (:func:`documents_sql`: one row per
document with its attributes and the ``kept`` / ``drop_reason`` a :class:`Decisions` derives from them) and
``license_conflicts``. A :class:`Decisions` is a value: :mod:`xgen_data.mixing.decisions` builds one from a recipe
or from the corpus's defaults; this module never reads a recipe.

Steps store per-document *attributes* that no recipe threshold changes (:mod:`xgen_data.store.corpus`,
``attributes/<step>/<params-hash>/``):

* ``license`` (:func:`xgen_data.attributes.filters.compute_license_attributes`), one set per license policy, keyed by
  its allow-list and ``labels_must_agree`` (:func:`xgen_data.attributes.licenses.license_params`): ``id, license_normalized (str),
  license_pass (bool), license_reason (str), license_tier (int8, dedup's keep tier)``;
* ``dedup`` (:func:`xgen_data.attributes.dedup.run.run_dedup`), keyed by the dedup parameters (threshold, num_perm, ngram,
  seed, bands, rows, scheme, exact, near): ``id, dup_cluster (int64), exact_group (int64), chash
  (binary 16)``. Clusters never depend on any filter or allow-list.

A :class:`Decisions` turns them into ``kept`` and ``drop_reason`` with one SQL view (:func:`documents_sql`),
never by rewriting files:

1. Filters (SPEC §2) apply only to the subsets the recipe packs (``packed``; all subsets without a recipe):
   ``too_few_tokens`` when ``n_tokens < min_tokens``, then ``license_not_permissive`` for subsets held to a
   license policy (``filter["policies"]``: ``{subset: {name, allow, labels_must_agree}}``; the defaults of
   ``xgen filter`` hold ``license_subsets`` to ``permissive``) whose license fails that policy. Each such
   subset reads its own policy's attribute set; under a policy with ``labels_must_agree``, members of an
   exact-duplicate group (dedup's ``exact_group``, when the recipe dedups) whose normalised labels differ fail
   with ``fail: labels disagree (exact copies: A, B)``.
2. Dedup keep rule, per cluster: the first member by (the filters keep it, it is in a packed subset,
   license tier, id, subset). Every other member gets ``dup_reason`` = ``exact_duplicate`` (same exact group as
   the kept copy, when exact dedup is on) or ``near_duplicate``, and ``dup_of`` / ``dup_of_subset`` = the kept
   copy. ``drop_reason`` = the filter reason, else ``dup_reason``; ``kept`` = no reason.

With no decisions at all (nothing ran yet), ``kept`` and ``drop_reason`` are NULL.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import duckdb

from xgen_data.attributes import decontam as decontam_step
from xgen_data.attributes import languages
from xgen_data.attributes.dedup import params as dedup_params
from xgen_data.attributes.dedup.params import REASON_EXACT, REASON_NEAR
from xgen_data.attributes.filters import REASON_LICENSE, REASON_SHORT
from xgen_data.attributes.licenses import LICENSE_TIERS, license_params
from xgen_data.store.corpus import Corpus, CorpusError, DamagedAttributeError
from xgen_data.store.duckdb_settings import duckdb_config, spill_dir

#: ``drop_reason`` values of the ``documents`` view: each is written by the step that decides it (filters,
#: dedup) and re-exported here, the one place readers take them from.
REASON_EVAL = "eval_overlap"


@dataclass(frozen=True)
class Decisions:
    """The settings that turn attributes into ``kept`` / ``drop_reason``.

    ``filter``: ``{"min_tokens", "license_subsets", "allow"}`` or None (no filters); ``dedup``: the dedup
    attribute parameters plus ``license_allow`` (the keep tier's allow-list), or None (no dedup); ``packed``:
    the subsets the filters apply to (None = every subset); ``label``: what a reader is told.
    """

    label: str
    filter: dict | None = None
    dedup: dict | None = None
    packed: tuple[str, ...] | None = None
    recipe_name: str | None = None
    recipe_sha256: str | None = None
    recipe_ref: str | None = None  # what `--recipe` takes to load it again: its file, else its shipped name
    decontam: tuple[str, ...] = ()  # evaluation set files whose overlapping documents are dropped (eval_overlap)


def policies_of(flt: dict) -> dict[str, dict]:
    """``{subset: {"name", "allow", "labels_must_agree"}}`` of a filter setting: its ``policies``, or (the
    defaults of ``xgen filter``) ``license_subsets`` under the ``permissive`` allow-list ``allow``."""
    if flt.get("policies") is not None:
        return flt["policies"]
    return {s: {"name": "permissive", "allow": flt["allow"], "labels_must_agree": False}
            for s in flt["license_subsets"]}


def _q(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _qlist(items) -> str:
    return "[" + ", ".join(_q(x) for x in items) + "]"


SUBSET_FROM_PATH = r"regexp_extract(filename, '([^/\\]+)[/\\][^/\\]+\.parquet$', 1)"
PART_FROM_PATH = r"regexp_extract(filename, '([^/\\]+\.parquet)$', 1)"


def _attr_files(corpus: Corpus, step: str, params: dict, strict: bool, what: str) -> list[str] | None:
    """Committed attribute files of ``(step, params)``, or None (with ``strict``: a CorpusError saying what to run)."""
    try:
        return [f for _, f in corpus.attribute_files(step, params)]
    except CorpusError as exc:
        if strict or isinstance(exc, DamagedAttributeError):  # damage is never shown as "not computed"
            raise type(exc)(f"{exc}; {what}") from None
        return None


def documents_sql(corpus: Corpus, dec: Decisions, strict: bool = True) -> tuple[str, list[str]]:
    """``CREATE VIEW documents`` SQL for ``dec`` over the committed attributes (see module docstring).

    Parts are joined with their attribute files by position (``POSITIONAL JOIN``; a committed file whose row
    count is not its part's is damaged: :meth:`xgen_data.store.corpus.Corpus.attribute_files`), so no hash table
    over all documents is built: memory does not grow with the corpus. The dedup keep rule joins each document
    with its cluster's kept copy (one row per cluster); :func:`connect` keeps DuckDB from
    building that join's hash table on the documents side.

    Columns: ``id, subset, part, row, source, license, language (the source's, as a table key, else the
    detected one; :mod:`xgen_data.attributes.languages`), language_source (as ingested), language_detected,
    language_how, language_is_code, language_disagrees, path, meta, text, n_chars, n_bytes, n_tokens,
    license_normalized, license_policy (the subset's policy; NULL: not held to one), decision ('pass'/'fail'
    under that policy, or the base allow-list), reason, license_pass, license_reason, license_tier, dup_cluster, exact_group, dup_reason, dup_of, dup_of_subset,
    kept, drop_reason, contaminated, decontam_benchmark, decontam_item_id, decontam_kind, decontam_match`` (the
    ``eval_overlap`` match, NULL without decontamination).

    Args:
        strict: missing or stale attributes are an error (a recipe was named); otherwise the decisions that
            need them are left out and a warning is returned.
    Returns:
        ``(sql, warnings)``.
    Raises:
        CorpusError: ``strict`` and an attribute set the decisions need is missing or out of date.
        DamagedAttributeError: an attribute file is missing, damaged or out of step with its part.
    """
    warnings: list[str] = []
    hint = _rerun_hint(corpus, dec)
    flt, policies, lf = _filter_inputs(corpus, dec.filter, strict, hint, warnings)
    ded, uf, ld = _dedup_inputs(corpus, dec.dedup, strict, hint, warnings)
    parts = corpus.parts()
    gf = _attr_files(corpus, languages.LANGUAGE_STEP, languages.language_params(), False, hint)
    xf = _decontam_inputs(corpus, dec.decontam, strict, hint, warnings)
    labels = [s for s, p in policies.items() if p["labels_must_agree"]]
    copies = bool(ded and labels and lf)  # strict: exact copies under different labels fail too
    lic_ctes, lic_joins, lic_cols, tier = _license_join(lf, ld, labels, copies)
    lang_ctes, lang_joins, lang_cols = _language_join(gf)
    decon_ctes, decon_joins, decon_cols = _decontam_join(xf)
    dup_ctes, dup_joins, dup_cols = _dedup_join(uf, copies)
    # positional joins: attribute files are row-aligned with their parts (Corpus.attribute_files)
    ctes = [_parts_cte(parts), *lic_ctes, *lang_ctes, *decon_ctes, *dup_ctes]
    joins = [*lic_joins, *lang_joins, *decon_joins, *dup_joins]
    packed = _packed_expr(dec.packed)
    freason = _filter_reason(flt, policies, labels, copies, packed, xf)
    ctes.append(_base_cte(joins, lang_cols, lic_cols, tier, dup_cols, decon_cols, freason, packed))
    if ded:
        ctes.append(_keep_cte())
    sql = _documents_select(ctes, ded, policies, decided=bool(flt or ded or xf))
    return sql, warnings


def _rerun_hint(corpus: Corpus, dec: Decisions) -> str:
    """What to run when an attribute set ``dec`` needs is missing or stale (ends every such error and warning)."""
    return (f"run `xgen mix plan --corpus {corpus.root} --recipe {dec.recipe_ref or dec.recipe_name}` first (it "
            "computes them)"
            if dec.recipe_name else "re-run `xgen filter` / `xgen dedup`")


def _filter_inputs(corpus: Corpus, flt: dict | None, strict: bool, hint: str,
                   warnings: list[str]) -> tuple[dict | None, dict[str, dict], list[str] | None]:
    """``(filter, policies, license files)`` the filters use: per part, the license attribute file of its subset's
    policy, else of the base allow-list. A missing set (not ``strict``) drops the filters (``(None, {}, None)``)
    and appends a warning to ``warnings``."""
    if not flt:
        return flt, {}, None
    lf = _attr_files(corpus, "license", license_params(flt["allow"]), strict, hint)
    policies = policies_of(flt)
    if lf is not None:
        lf = _policy_files(corpus, flt, policies, lf, strict, hint)
    if lf is None:
        warnings.append(f"the filter decisions are out of date or missing; {hint}")
        return None, {}, None
    return flt, policies, lf


def _policy_files(corpus: Corpus, flt: dict, policies: dict[str, dict], lf: list[str], strict: bool,
                  hint: str) -> list[str] | None:
    """``lf`` (the base allow-list's files, one per part) with each part of a subset held to another policy
    reading that policy's file instead; None when one of those sets is missing (not ``strict``)."""
    by_policy = {}
    for subset, pol in policies.items():
        key = license_params(pol["allow"], pol["labels_must_agree"])
        if key == license_params(flt["allow"]):
            continue
        files = _attr_files(corpus, "license", key, strict, hint)
        if files is None:
            return None
        by_policy[subset] = files
    if not by_policy:
        return lf
    subsets = [p.subset for p in corpus.parts()]
    return [by_policy[sub][i] if sub in by_policy else f for i, (sub, f) in enumerate(zip(subsets, lf))]


def _dedup_inputs(corpus: Corpus, ded: dict | None, strict: bool, hint: str,
                  warnings: list[str]) -> tuple[dict | None, list[str] | None, list[str] | None]:
    """``(dedup, dedup files, keep-tier license files)``; a missing set (not ``strict``) drops dedup
    (``(None, None, None)``) and appends a warning to ``warnings``."""
    if not ded:
        return ded, None, None
    uf = _attr_files(corpus, "dedup", dedup_params.dedup_attr_params(ded), strict, hint)
    ld = _attr_files(corpus, "license", license_params(ded["license_allow"]), strict, hint)
    if uf is None or ld is None:
        warnings.append(f"the dedup decisions are out of date or missing; {hint}")
        return None, None, None
    return ded, uf, ld


def _decontam_inputs(corpus: Corpus, eval_sets: tuple[str, ...], strict: bool, hint: str,
                     warnings: list[str]) -> list[str] | None:
    """The decontamination attribute files of ``eval_sets``, or None (none asked for; or missing, not ``strict``:
    a warning is appended to ``warnings``)."""
    xf = _attr_files(corpus, decontam_step.DECONTAM_STEP, decontam_step.decontam_params(eval_sets), strict,
                     hint) if eval_sets else None
    if eval_sets and xf is None:
        warnings.append(f"the decontamination decisions are out of date or missing; {hint}")
    return xf


def _parts_cte(parts) -> str:
    """CTE ``d``: every part's rows with ``subset``, ``part`` (file name) and ``row`` (row number in it)."""
    # NOT MATERIALIZED: a CTE used twice would otherwise be materialized with every column, text included
    return f"""d AS NOT MATERIALIZED (SELECT *, {SUBSET_FROM_PATH} AS subset, {PART_FROM_PATH} AS part,
            file_row_number AS row
        FROM read_parquet({_qlist(p.path for p in parts)}, filename=true, file_row_number=true))"""


def _license_join(lf: list[str] | None, ld: list[str] | None, labels: list[str],
                  copies: bool) -> tuple[list[str], list[str], str, str]:
    """``(ctes, joins, license columns, keep-tier expression)`` of the license attributes: ``l`` (the filters'
    files ``lf``, else dedup's ``ld``) and ``lt`` (dedup's keep tier when its allow-list's files differ).
    ``copies``: subsets in ``labels`` fail exact copies whose labels disagree (``c``, :func:`_dedup_join`)."""
    ctes, joins = [], []
    if copies:
        lic_cols = f"""coalesce(l.license_pass AND NOT (d.subset IN ({', '.join(_q(s) for s in labels)})
                AND c.labels IS NOT NULL), l.license_pass) AS license_pass,
            CASE WHEN l.license_pass AND d.subset IN ({', '.join(_q(s) for s in labels)}) AND c.labels IS NOT NULL
                THEN 'fail: labels disagree (exact copies: ' || c.labels || ')' ELSE l.license_reason END
                AS license_reason, l.license_normalized"""
    elif lf or ld:
        lic_cols = "l.license_pass, l.license_reason, l.license_normalized"
    else:
        lic_cols = ("CAST(NULL AS BOOLEAN) AS license_pass, CAST(NULL AS VARCHAR) AS license_reason, "
                    "CAST(NULL AS VARCHAR) AS license_normalized")
    same = lf is not None and ld is not None and lf == ld
    if lf or ld:
        ctes.append(f"""l AS NOT MATERIALIZED (SELECT license_pass, license_reason, license_tier,
            license_normalized FROM read_parquet({_qlist(lf or ld)}))""")
        joins.append("POSITIONAL JOIN l")
    if ld and not same and lf:
        ctes.append(f"""lt AS NOT MATERIALIZED (SELECT license_tier FROM read_parquet({_qlist(ld)}))""")
        joins.append("POSITIONAL JOIN lt")
        tier = "lt.license_tier"
    else:
        tier = "l.license_tier" if (lf or ld) else "CAST(NULL AS TINYINT)"
    return ctes, joins, lic_cols, tier


def _language_join(gf: list[str] | None) -> tuple[list[str], list[str], str]:
    """``(ctes, joins, language columns)`` of the language attributes ``gf`` (``g``); without them the
    source's language and NULLs."""
    if gf:
        cte = f"""g AS NOT MATERIALIZED (SELECT language, language_detected, language_how,
            language_is_code, language_disagrees FROM read_parquet({_qlist(gf)}))"""
        lang_cols = """g.language AS language, d.language AS language_source, g.language_detected,
            g.language_how, g.language_is_code, g.language_disagrees"""
        return [cte], ["POSITIONAL JOIN g"], lang_cols
    lang_cols = """d.language AS language, d.language AS language_source,
            CAST(NULL AS VARCHAR) AS language_detected, CAST(NULL AS VARCHAR) AS language_how,
            CAST(NULL AS BOOLEAN) AS language_is_code, CAST(NULL AS BOOLEAN) AS language_disagrees"""
    return [], [], lang_cols


def _decontam_join(xf: list[str] | None) -> tuple[list[str], list[str], str]:
    """``(ctes, joins, decontam columns)`` of the decontamination attributes ``xf`` (``x``), else NULLs."""
    if xf:
        cte = f"""x AS NOT MATERIALIZED (SELECT contaminated, decontam_benchmark, decontam_item_id,
            decontam_kind, decontam_match FROM read_parquet({_qlist(xf)}))"""
        decon_cols = "x.contaminated, x.decontam_benchmark, x.decontam_item_id, x.decontam_kind, x.decontam_match"
        return [cte], ["POSITIONAL JOIN x"], decon_cols
    decon_cols = ("CAST(NULL AS BOOLEAN) AS contaminated, CAST(NULL AS VARCHAR) AS decontam_benchmark, "
                  "CAST(NULL AS VARCHAR) AS decontam_item_id, CAST(NULL AS VARCHAR) AS decontam_kind, "
                  "CAST(NULL AS VARCHAR) AS decontam_match")
    return [], [], decon_cols


def _dedup_join(uf: list[str] | None, copies: bool) -> tuple[list[str], list[str], str]:
    """``(ctes, joins, dedup columns)`` of the dedup attributes ``uf`` (``u``), else NULLs. ``copies``: also
    ``c``, the exact groups whose normalised license labels disagree (``labels``: them, sorted)."""
    if not uf:
        return [], [], "CAST(NULL AS BIGINT) AS dup_cluster, CAST(NULL AS BIGINT) AS exact_group"
    ctes = [f"""u AS NOT MATERIALIZED (SELECT dup_cluster, exact_group
            FROM read_parquet({_qlist(uf)}))"""]
    joins = ["POSITIONAL JOIN u"]
    if copies:
        ctes.append("""c AS NOT MATERIALIZED (SELECT u.exact_group,
                    array_to_string(list_sort(list_distinct(list(coalesce(l.license_normalized, 'none')))), ', ')
                    AS labels
                FROM u POSITIONAL JOIN l WHERE u.exact_group IS NOT NULL
                GROUP BY u.exact_group HAVING count(DISTINCT coalesce(l.license_normalized, 'none')) > 1)""")
        joins.append("LEFT JOIN c ON c.exact_group = u.exact_group")
    return ctes, joins, "u.dup_cluster, u.exact_group"


def _packed_expr(packed: tuple[str, ...] | None) -> str:
    """SQL condition: the document's subset is packed (None: every subset)."""
    return "TRUE" if packed is None else (f"d.subset IN ({', '.join(_q(s) for s in packed)})"
                                          if packed else "FALSE")


def _filter_reason(flt: dict | None, policies: dict[str, dict], labels: list[str], copies: bool, packed: str,
                   xf: list[str] | None) -> str:
    """SQL ``filter_reason`` (SPEC §2, in order): NULL outside packed subsets, ``too_few_tokens``,
    ``license_not_permissive`` (subsets held to a policy), ``eval_overlap`` (with decontamination ``xf``)."""
    if flt:
        lic_subsets = f"d.subset IN ({', '.join(_q(s) for s in policies)})" if policies else "FALSE"
        lic_ok = "coalesce(l.license_pass, FALSE)"
        if copies:
            lic_ok += f" AND NOT (d.subset IN ({', '.join(_q(s) for s in labels)}) AND c.labels IS NOT NULL)"
        return f"""CASE WHEN NOT ({packed}) THEN NULL
            WHEN d.n_tokens < {int(flt['min_tokens'])} THEN '{REASON_SHORT}'
            WHEN {lic_subsets} AND NOT ({lic_ok}) THEN '{REASON_LICENSE}'
            {f"WHEN x.contaminated THEN '{REASON_EVAL}'" if xf else ""} END"""
    if xf:
        return f"CASE WHEN ({packed}) AND x.contaminated THEN '{REASON_EVAL}' END"
    return "CAST(NULL AS VARCHAR)"


def _base_cte(joins: list[str], lang_cols: str, lic_cols: str, tier: str, dup_cols: str, decon_cols: str,
              freason: str, packed: str) -> str:
    """CTE ``b``: each document (``d``) with its attribute columns (``joins``), ``license_tier_rank`` (the keep
    tier ``tier``), ``filter_reason`` and ``packed``."""
    return f"""b AS NOT MATERIALIZED (SELECT d.id, d.subset, d.part, d.row, d.source, d.license,
            {lang_cols}, d.path, d.meta, d.text, d.n_chars, d.n_bytes, d.n_tokens, {lic_cols},
            {tier} AS license_tier_rank, {dup_cols}, {decon_cols},
            {freason} AS filter_reason, {packed} AS packed
        FROM d {' '.join(joins)})"""


def _keep_cte() -> str:
    """CTE ``k``: each dedup cluster's kept copy (``kid``, ``ksub``, ``kgroup``), the first member by (the filters
    keep it, it is packed, license tier, id, subset)."""
    unknown = LICENSE_TIERS.index("unknown")
    return f"""k AS NOT MATERIALIZED (SELECT dup_cluster,
                arg_min(struct_pack(kid := id, ksub := subset, kgroup := exact_group),
                    struct_pack(f := filter_reason IS NOT NULL, p := NOT packed,
                                t := coalesce(license_tier_rank, {unknown}), i := id, s := subset)) AS k
            FROM b WHERE dup_cluster IS NOT NULL GROUP BY dup_cluster)"""


def _dup_reason(ded: dict) -> str:
    """SQL ``dup_reason`` of a document against its cluster's kept copy ``k``: NULL for that copy (or no
    cluster), ``exact_duplicate`` in its exact group (with exact dedup on), else ``near_duplicate``."""
    exact_on = "TRUE" if ded.get("exact", True) else "FALSE"
    return f"""CASE WHEN b.dup_cluster IS NULL OR (b.id = k.k.kid AND b.subset = k.k.ksub) THEN NULL
            WHEN {exact_on} AND b.exact_group IS NOT DISTINCT FROM k.k.kgroup AND b.exact_group IS NOT NULL
            THEN '{REASON_EXACT}' ELSE '{REASON_NEAR}' END"""


def _documents_select(ctes: list[str], ded: dict | None, policies: dict[str, dict], decided: bool) -> str:
    """The ``CREATE VIEW documents`` statement over ``ctes`` (ending with ``b``, and ``k`` with ``ded``): the
    dedup keep rule's ``dup_reason`` / ``dup_of``, ``drop_reason`` and ``kept`` (NULL unless ``decided``)."""
    if ded:
        dreason, kjoin, kid, ksub = _dup_reason(ded), "LEFT JOIN k USING (dup_cluster)", "k.k.kid", "k.k.ksub"
    else:
        dreason, kjoin, kid, ksub = "CAST(NULL AS VARCHAR)", "", "NULL", "NULL"
    tier_name = "CASE " + " ".join(f"WHEN license_tier_rank = {i} THEN '{n}'" for i, n in enumerate(LICENSE_TIERS)) \
        + " END"
    policy_col = ("CASE " + " ".join(f"WHEN subset = {_q(s)} THEN {_q(p['name'])}" for s, p in policies.items())
                  + " END") if policies else "CAST(NULL AS VARCHAR)"
    reason = "coalesce(filter_reason, dup_reason)"
    kept = f"({reason}) IS NULL" if decided else "CAST(NULL AS BOOLEAN)"  # no usable decisions: NULL
    return f"""CREATE OR REPLACE VIEW documents AS WITH {', '.join(ctes)},
        r AS NOT MATERIALIZED (SELECT b.*, {dreason} AS dup_reason, {kid} AS kept_id, {ksub} AS kept_subset
            FROM b {kjoin})
        SELECT id, subset, part, row, source, license, language, language_source, language_detected,
            language_how, language_is_code, language_disagrees, path, meta, text, n_chars, n_bytes, n_tokens,
            license_normalized, {policy_col} AS license_policy,
            CASE WHEN license_pass THEN 'pass' WHEN NOT license_pass THEN 'fail' END AS decision,
            license_reason AS reason,
            license_pass, license_reason, {tier_name} AS license_tier, dup_cluster, exact_group, dup_reason,
            CASE WHEN dup_reason IS NOT NULL THEN kept_id END AS dup_of,
            CASE WHEN dup_reason IS NOT NULL THEN kept_subset END AS dup_of_subset,
            {kept} AS kept, {reason} AS drop_reason, contaminated, decontam_benchmark, decontam_item_id,
            decontam_kind, decontam_match
        FROM r"""


#: The ``license_conflicts`` view: every document of each exact-duplicate group whose members carry
#: licenses that differ after normalisation (``license_normalized``, :func:`xgen_data.attributes.licenses.normalize`: so
#: ``GPL-2.0`` and ``GPL-2.0-only`` agree; a label with no SPDX expression, e.g. unparsable, is compared by its
#: trimmed raw text, empty and missing being one), with the raw labels kept and that group's decisions.
LICENSE_CONFLICTS_SQL = """CREATE OR REPLACE VIEW license_conflicts AS
    WITH em AS NOT MATERIALIZED (SELECT *, coalesce(license_normalized, chr(0) || coalesce(trim(license), ''))
              AS license_key FROM documents WHERE exact_group IS NOT NULL),
    g AS NOT MATERIALIZED (SELECT exact_group, count(*) AS group_size, count(DISTINCT license_key) AS n_labels
          FROM em GROUP BY exact_group HAVING count(DISTINCT license_key) > 1)
    SELECT em.exact_group AS group_id, em.subset, em.id, em.license, em.license_normalized, em.license_tier,
        em.source, em.path, g.group_size, g.n_labels, em.kept, em.drop_reason, em.dup_cluster, em.dup_of,
        em.dup_of_subset
    FROM em JOIN g USING (exact_group) ORDER BY group_id, em.subset, em.part, em.row"""


def describe(dec: Decisions) -> str:
    """One line saying which decisions a view or report shows (printed by ``xgen sql`` / ``xgen stats``)."""
    return f"decisions: {dec.label}"


def connect(corpus_dir: str, dec: Decisions, quiet: bool = False) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the ``documents`` and ``license_conflicts`` views for ``dec``.

    The parts' SHA-256 are verified first (the views read them: damaged bytes are never shown). The connection
    holds at most :func:`xgen_data.store.duckdb_settings.memory_limit` (DuckDB spills beyond it), so views over a
    large corpus do not need memory in proportion to it.

    Args:
        dec: the decisions ``documents`` shows (a recipe's: strict, a missing attribute set is an error; the
            corpus defaults: the decisions that lack their attributes are left out with a warning).
        quiet: do not print warnings (stale default decisions) on stderr.
    Raises:
        CorpusError: not a corpus, a corpus with no documents, or (with a recipe's decisions) its attributes are
            missing or out of date. DamagedPartError / DamagedAttributeError: a part or a committed attribute
            file differs from its recorded SHA-256.
    """
    corpus = Corpus(corpus_dir)
    if not corpus.parts():
        raise CorpusError(f"{corpus_dir}: corpus has no documents; run `xgen ingest` first")
    corpus.verify_parts()  # the views read the parts: never show damaged bytes
    view, warnings = documents_sql(corpus, dec, strict=dec.recipe_name is not None)
    for w in warnings if not quiet else ():
        print(f"warning: {w}", file=sys.stderr)
    con = duckdb.connect(":memory:", config=duckdb_config(spill_dir()))
    # Joins build their hash table on the right side as written. DuckDB estimates a positional join (the
    # documents view) at ~0 rows, so its build-side swap would put every document into the hash table of the
    # dedup keep rule's join with the (far smaller) table of kept copies: memory in proportion to the corpus.
    con.execute("SET disabled_optimizers = 'build_side_probe_side'")
    con.execute(view)
    con.execute(LICENSE_CONFLICTS_SQL)
    return con
