"""The facts a data card states about a shards folder, each with the query (or manifest field) it came from.

Corpus facts are SQL over the views of :mod:`xgen_data.stats.sql` (``documents`` with the decisions of the
recipe the shards were built with, ``shards``), so each can be re-run as printed::

    xgen sql --corpus CORPUS --recipe CARD/recipe.toml --shards SHARDS "<query>"

Facts that only the shards manifest holds (the mixture plan, the recipe text) name their manifest field.
Without a corpus, the packed counts and checksums are read from the manifest and say so.
"""
from __future__ import annotations

import dataclasses
import os

from xgen_data.mixing import recipe as recipe_mod
from xgen_data.stats import sql as sqlmod

# (key, title, query); {shards} is the shards folder's absolute path as an SQL string literal, {subsets} the
# list of the subsets the recipe packs (the documents of other subsets were not candidates).
CORPUS_QUERIES = (
    ("sources", "Documents and tokens per subset and source",
     "SELECT subset, source, count(*) AS documents, sum(n_tokens) AS tokens, "
     "count(*) FILTER (WHERE kept) AS kept_documents, coalesce(sum(n_tokens) FILTER (WHERE kept), 0) AS kept_tokens "
     "FROM documents WHERE subset IN {subsets} GROUP BY subset, source ORDER BY subset, tokens DESC, source"),
    ("funnel", "What was kept and why the rest was dropped",
     "SELECT coalesce(drop_reason, 'kept') AS outcome, count(*) AS documents, sum(n_tokens) AS tokens "
     "FROM documents WHERE subset IN {subsets} GROUP BY outcome ORDER BY documents DESC, outcome"),
    ("licenses", "License decisions per policy, with reasons",
     "SELECT subset, license_policy, decision, reason, count(*) AS documents FROM documents "
     "WHERE subset IN {subsets} AND license_policy IS NOT NULL GROUP BY ALL "
     "ORDER BY subset, documents DESC, reason LIMIT 40"),
    ("kept_licenses", "Licenses of the kept documents",
     "SELECT coalesce(license_normalized, license, 'unknown') AS license, count(*) AS documents, "
     "sum(n_tokens) AS tokens FROM documents WHERE kept AND subset IN {subsets} GROUP BY 1 "
     "ORDER BY tokens DESC, license LIMIT 40"),
    ("languages", "Languages of the kept documents",
     "SELECT coalesce(language, 'unknown') AS language, coalesce(bool_or(language_is_code), false) AS is_code, "
     "count(*) AS documents, sum(n_tokens) AS tokens FROM documents WHERE kept AND subset IN {subsets} "
     "GROUP BY 1 ORDER BY tokens DESC, language"),
    ("duplicates", "Duplicates removed",
     "SELECT count(*) FILTER (WHERE dup_reason IS NOT NULL) AS duplicate_documents, "
     "coalesce(sum(n_tokens) FILTER (WHERE dup_reason IS NOT NULL), 0) AS duplicate_tokens, "
     "count(DISTINCT dup_cluster) FILTER (WHERE dup_reason IS NOT NULL) AS clusters FROM documents "
     "WHERE subset IN {subsets}"),
    ("duplicate_examples", "Duplicate clusters: a removed copy beside the kept one",
     "SELECT d.subset, d.id AS removed_id, d.dup_of AS kept_id, left(d.text, 400) AS removed_text, "
     "left(k.text, 400) AS kept_text FROM documents d JOIN documents k ON k.id = d.dup_of "
     "AND k.subset = d.dup_of_subset WHERE d.subset IN {subsets} AND d.dup_reason IS NOT NULL "
     "ORDER BY d.subset, d.id LIMIT 3"),
    ("decontamination", "Documents dropped for overlap with evaluation sets, per benchmark",
     "SELECT decontam_benchmark AS benchmark, count(*) AS documents, sum(n_tokens) AS tokens FROM documents "
     "WHERE subset IN {subsets} AND contaminated GROUP BY 1 ORDER BY documents DESC, benchmark"),
    ("lengths", "Lengths of the kept documents (tokens, powers of two)",
     "SELECT floor(log2(greatest(n_tokens, 1)))::INTEGER AS log2_tokens, count(*) AS documents "
     "FROM documents WHERE kept AND subset IN {subsets} GROUP BY 1 ORDER BY 1"),
    ("packed", "Packed per stage, sub-stage and split",
     "SELECT stage, substage, seq_len, CASE WHEN path LIKE '%/validation-%' THEN 'validation' ELSE 'train' END "
     "AS split, sum(n_sequences) AS sequences, sum(n_tokens) AS tokens FROM shards WHERE shard_dir = {shards} "
     "GROUP BY ALL ORDER BY stage, seq_len, substage, split"),
    ("packed_subsets", "Packed tokens per stage and subset (EOS not counted)",
     "SELECT stage, j.key AS subset, sum(j.value::BIGINT) AS tokens FROM shards, json_each(tokens_per_subset) "
     "AS j WHERE shard_dir = {shards} GROUP BY ALL ORDER BY stage, subset"),
    ("packed_sources", "Packed tokens per source (all stages, EOS not counted)",
     "SELECT j.key AS source, sum(j.value::BIGINT) AS tokens FROM shards, json_each(tokens_per_source) AS j "
     "WHERE shard_dir = {shards} GROUP BY ALL ORDER BY tokens DESC, source"),
    ("checksums", "Shard checksums (SHA-256)",
     "SELECT path, sha256 FROM shards WHERE shard_dir = {shards} ORDER BY path"),
)


@dataclasses.dataclass(frozen=True)
class Fact:
    """One table of the card: its rows and where they came from (``kind`` "sql", "manifest", or "derived":
    computed from other facts, which ``source`` names)."""

    key: str
    title: str
    kind: str
    source: str
    columns: tuple[str, ...]
    rows: tuple[tuple, ...]

    def to_json(self) -> dict:
        return {"key": self.key, "title": self.title, "kind": self.kind, "source": self.source,
                "columns": list(self.columns), "rows": [list(r) for r in self.rows]}


def _sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def packed_subsets(manifest: dict) -> list[str]:
    """The subsets the shards' recipe packs (from the manifest's plan), sorted."""
    return sorted({p["subset"] for p in manifest.get("plan", [])})


def query_text(query: str, shard_dir: str, subsets: list[str]) -> str:
    """A query of :data:`CORPUS_QUERIES` with the shards folder and packed subsets filled in (as printed)."""
    listed = "(" + ", ".join(_sql_literal(s) for s in subsets) + ")" if subsets else "(NULL)"
    return query.replace("{shards}", _sql_literal(os.path.abspath(shard_dir))).replace("{subsets}", listed)


def recipe_bytes(manifest: dict) -> bytes:
    """The recipe the shards were built with (the manifest's ``recipe_toml``), as the card's recipe.toml."""
    return manifest["recipe_toml"].encode("utf-8")


def _plain(v):
    return int(v) if hasattr(v, "is_integer") and not isinstance(v, float) else v


def corpus_facts(corpus_dir: str, shard_dir: str, manifest: dict, recipe_path: str) -> list[Fact]:
    """Run :data:`CORPUS_QUERIES` over the corpus with the decisions of the shards' recipe (``recipe_path``:
    :func:`recipe_bytes` written to a file, the card's ``recipe.toml``).

    Raises:
        CorpusError and the damage errors of :func:`xgen_data.stats.sql.connect`.
    """
    con = sqlmod.connect(corpus_dir, shard_dirs=[shard_dir], recipe=recipe_mod.load(recipe_path), quiet=True)
    try:
        out = []
        for key, title, query in CORPUS_QUERIES:
            text = query_text(query, shard_dir, packed_subsets(manifest))
            cur = con.execute(text)
            cols = tuple(d[0] for d in cur.description)
            out.append(Fact(key, title, "sql", text, cols, tuple(tuple(_plain(v) for v in r) for r in cur.fetchall())))
        return out
    finally:
        con.close()


def manifest_facts(manifest: dict, with_packed: bool) -> list[Fact]:
    """The plan and recipe (always from the manifest), and with ``with_packed`` the packed counts and
    checksums too (for a card made without the corpus)."""
    plan = tuple((p["stage"], p["subset"], p["documents"], p["effective_tokens"], p["proportion"], p["epochs"])
                 for p in manifest.get("plan", []))
    out = [Fact("plan", "Mixture plan (effective tokens, proportions, epochs)", "manifest", "manifest.json: plan",
                ("stage", "subset", "documents", "effective_tokens", "proportion", "epochs"), plan)]
    if with_packed:
        shards = manifest["shards"]
        packed: dict[tuple, list[int]] = {}
        subsets: dict[tuple, int] = {}
        sources: dict[str, int] = {}
        for e in shards:
            key = (e["stage"], e["substage"], e["seq_len"], e["split"])
            acc = packed.setdefault(key, [0, 0])
            acc[0] += e["n_sequences"]
            acc[1] += e["n_sequences"] * e["seq_len"]
            for k, v in e["tokens_per_subset"].items():
                subsets[(e["stage"], k)] = subsets.get((e["stage"], k), 0) + v
            for k, v in e["tokens_per_source"].items():
                sources[k] = sources.get(k, 0) + v
        out += [
            Fact("packed", "Packed per stage, sub-stage and split", "manifest", "manifest.json: shards[]",
                 ("stage", "substage", "seq_len", "split", "sequences", "tokens"),
                 tuple((*k, *v) for k, v in sorted(packed.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][1])))),
            Fact("packed_subsets", "Packed tokens per stage and subset (EOS not counted)", "manifest",
                 "manifest.json: shards[].tokens_per_subset", ("stage", "subset", "tokens"),
                 tuple((*k, v) for k, v in sorted(subsets.items()))),
            Fact("packed_sources", "Packed tokens per source (all stages, EOS not counted)", "manifest",
                 "manifest.json: shards[].tokens_per_source", ("source", "tokens"),
                 tuple(sorted(sources.items(), key=lambda kv: (-kv[1], kv[0])))),
            Fact("checksums", "Shard checksums (SHA-256)", "manifest", "manifest.json: shards[].sha256",
                 ("path", "sha256"), tuple(sorted((e["path"], e["sha256"]) for e in shards))),
        ]
    return out


def plan_vs_packed(plan: Fact, packed_subsets: Fact) -> Fact:
    """The plan's proportion of each stage and subset beside the share of the tokens packed for it.

    ``packed_share`` = the subset's packed tokens / the stage's packed tokens (EOS not counted, validation
    sequences included), from the two facts named in the source.
    """
    packed = {(st, sub): t for st, sub, t in packed_subsets.rows}
    totals: dict[str, int] = {}
    for (st, _), t in packed.items():
        totals[st] = totals.get(st, 0) + t
    rows = []
    for st, sub, _, _, prop, _ in plan.rows:
        tokens = packed.get((st, sub), 0)
        rows.append((st, sub, prop, tokens, tokens / totals[st] if totals.get(st) else 0.0))
    return Fact("plan_vs_packed", "Mixture plan against what was packed, per stage and subset", "derived",
                f"facts `{plan.key}` ({plan.source}) and `{packed_subsets.key}`: packed_share = tokens / stage total",
                ("stage", "subset", "plan_proportion", "packed_tokens", "packed_share"), tuple(rows))


def gather(shard_dir: str, manifest: dict, corpus_dir: str | None, recipe_path: str) -> dict[str, Fact]:
    """Every fact of the card by key: the corpus queries when ``corpus_dir`` is given, the manifest's always,
    and the plan beside what was packed."""
    facts = manifest_facts(manifest, with_packed=corpus_dir is None)
    if corpus_dir is not None:
        facts += corpus_facts(corpus_dir, shard_dir, manifest, recipe_path)
    by_key = {f.key: f for f in facts}
    by_key["plan_vs_packed"] = plan_vs_packed(by_key["plan"], by_key["packed_subsets"])
    return by_key
