"""SQL over corpus statistics with DuckDB (views over the corpus Parquet files and shard manifests).

Views (created by :func:`connect`):

* ``documents``: one row per document: ``id, subset, part, row, source, license, language, path, meta,
  text, n_chars, n_bytes, n_tokens``, its attributes ``license_pass, license_reason, license_tier,
  dup_cluster, exact_group``, and the decisions derived for one recipe (or the corpus defaults):
  ``dup_reason, dup_of, dup_of_subset, kept, drop_reason`` (:mod:`xgen_data.decisions`; the filter's
  reason first, then dedup's; ``kept`` = no reason).
* ``shards``: one row per shard file of every shards directory built from this corpus: ``shard_dir, path,
  stage, substage, seq_len, n_sequences, n_tokens, sha256, tokens_per_subset (JSON), tokens_per_source
  (JSON)``.
* ``license_conflicts``: exact duplicates carrying different license labels, with their decisions.
"""
from __future__ import annotations

import json
import os
import sys

import duckdb

from xgen_data import decisions, shards
from xgen_data.corpus import Corpus

SUBSET_FROM_PATH = decisions.SUBSET_FROM_PATH
_PART_FROM_PATH = decisions.PART_FROM_PATH


def _q(path: str) -> str:
    return "'" + path.replace("'", "''") + "'"


def shard_rows(shard_dirs: list[str]) -> list[dict]:
    """Rows of the ``shards`` view from each directory's ``manifest.json``.

    Directories that are gone are skipped; one whose manifest is unreadable or malformed is skipped with
    a warning on stderr naming it, so one broken folder never blocks SQL over the corpus.
    """
    rows = []
    for shard_dir in shard_dirs:
        if not os.path.exists(os.path.join(shard_dir, "manifest.json")):
            continue
        try:
            manifest = shards.read_manifest(shard_dir)
            for s in manifest["shards"]:
                rows.append({"shard_dir": shard_dir, "path": s["path"], "stage": s["stage"],
                             "substage": s["substage"], "seq_len": int(s["seq_len"]),
                             "n_sequences": int(s["n_sequences"]), "n_tokens": int(s["seq_len"]) * int(s["n_sequences"]),
                             "sha256": s["sha256"],
                             "tokens_per_subset": json.dumps(s["tokens_per_subset"], sort_keys=True),
                             "tokens_per_source": json.dumps(s["tokens_per_source"], sort_keys=True)})
        except (shards.ShardError, KeyError, TypeError, ValueError) as exc:
            detail = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            print(f"warning: {shard_dir}/manifest.json skipped in the `shards` view: {detail}", file=sys.stderr)
    return rows


def connect(corpus_dir: str, shard_dirs: list[str] | None = None, recipe=None, dec=None,
            quiet: bool = False) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the views of this module over the corpus at ``corpus_dir``.

    Args:
        shard_dirs: extra shards directories for the ``shards`` view, besides those registered by
            ``xgen mix build`` in ``corpus.json``.
        recipe: a :class:`xgen_data.recipe.Recipe` whose decisions ``documents`` shows; None = the corpus
            defaults (:func:`xgen_data.decisions.from_defaults`). ``dec``: explicit
            :class:`xgen_data.decisions.Decisions` instead.
        quiet: do not print warnings (stale default decisions) on stderr.
    Raises:
        CorpusError: not a corpus, a corpus with no documents, or (with a recipe) its attributes are missing or
            out of date (the message says to run ``xgen mix plan``).
    """
    corpus = Corpus(corpus_dir)
    if not corpus.parts():
        from xgen_data.corpus import CorpusError

        raise CorpusError(f"{corpus_dir}: corpus has no documents; run `xgen ingest` first")
    if dec is None:
        dec = decisions.for_corpus(corpus, recipe)
    view, warnings = decisions.documents_sql(corpus, dec, strict=dec.recipe_name is not None)
    for w in warnings if not quiet else ():
        print(f"warning: {w}", file=sys.stderr)
    con = duckdb.connect(":memory:")
    con.execute(view)
    con.execute(decisions.LICENSE_CONFLICTS_SQL)
    dirs = list(corpus.read_meta().get("shard_dirs", [])) + [os.path.abspath(d) for d in shard_dirs or []]
    rows = shard_rows(list(dict.fromkeys(dirs)))
    if rows:
        import pyarrow as pa

        con.register("_shards_rows", pa.Table.from_pylist(rows))
        con.execute("CREATE OR REPLACE VIEW shards AS SELECT * FROM _shards_rows")
    return con


#: The tables ``xgen stats`` prints: (title, SQL).
STATS_QUERIES: list[tuple[str, str]] = [
    ("Documents and tokens per subset", """SELECT subset, count(*) AS documents, sum(n_tokens) AS tokens,
        count(*) FILTER (kept) AS kept_documents, sum(n_tokens) FILTER (kept) AS kept_tokens
        FROM documents GROUP BY subset ORDER BY subset"""),
    ("Per source (top 20 by tokens)", """SELECT subset, source, count(*) AS documents, sum(n_tokens) AS tokens,
        count(*) FILTER (kept) AS kept_documents FROM documents GROUP BY ALL ORDER BY tokens DESC LIMIT 20"""),
    ("Per license (top 20 by documents)", """SELECT subset, license, count(*) AS documents, sum(n_tokens) AS tokens,
        count(*) FILTER (kept) AS kept_documents FROM documents GROUP BY ALL ORDER BY documents DESC LIMIT 20"""),
    ("Per language (top 20 by tokens)", """SELECT subset, language, count(*) AS documents, sum(n_tokens) AS tokens
        FROM documents GROUP BY ALL ORDER BY tokens DESC LIMIT 20"""),
    ("Document length in tokens (quantiles)", """SELECT subset, min(n_tokens) AS min,
        quantile_disc(n_tokens, 0.1) AS p10, quantile_disc(n_tokens, 0.5) AS p50,
        quantile_disc(n_tokens, 0.9) AS p90, quantile_disc(n_tokens, 0.99) AS p99, max(n_tokens) AS max
        FROM documents GROUP BY subset ORDER BY subset"""),
    ("Drops by reason", """SELECT subset, coalesce(drop_reason, '(kept)') AS reason, count(*) AS documents,
        sum(n_tokens) AS tokens FROM documents GROUP BY ALL ORDER BY subset, documents DESC"""),
]
