"""SQL over corpus statistics with DuckDB (views over the corpus Parquet files and shard manifests).

Views (created by :func:`connect`):

* ``documents``: one row per document: ``id, subset, part, row, source, license, language, path, meta,
  text, n_chars, n_bytes, n_tokens``, its attributes ``license_normalized, license_policy, decision, reason``
  (the subset's license policy's), ``language_source, language_detected, language_how, language_is_code,
  language_disagrees`` (:mod:`xgen_data.attributes.languages`; ``language`` is the source's, else the detected one),
  ``license_pass, license_reason, license_tier,
  dup_cluster, exact_group``, and the decisions derived for one recipe (or the corpus defaults):
  ``dup_reason, dup_of, dup_of_subset, kept, drop_reason`` (:mod:`xgen_data.mixing.decisions`; the filter's
  reason first, then dedup's; ``kept`` = no reason).
* ``shards``: one row per shard file of every shards directory built from this corpus: ``shard_dir,
  recipe, recipe_sha256, path, stage, substage, split (train or validation), seq_len, n_sequences, n_tokens, sha256, tokens_per_subset
  (JSON), tokens_per_source (JSON)``; ``recipe`` and ``recipe_sha256`` name the recipe the folder was built
  with (its manifest also holds the full TOML text).
* ``license_conflicts``: exact duplicates whose licenses differ after normalisation (``license_normalized``;
  raw labels shown), with their decisions.

``xgen sql`` is read-only (:func:`check_read_only`, :func:`lock_down`): DuckDB's own parser classifies
each statement and only queries run; the connection then refuses file access outside the corpus's
folders, extension installs and loads, and any change of its settings.
"""
from __future__ import annotations

import json
import os
import re
import sys

import duckdb
import pyarrow as pa

from xgen_data import query
from xgen_data.attributes import languages
from xgen_data.errors import RefusedError
from xgen_data.mixing import decisions
from xgen_data.shards import shard_format as shards
from xgen_data.store.corpus import Corpus
from xgen_data.store.duckdb_settings import spill_dir

#: Columns of the ``shards`` view (one row per shard file of every registered shards folder).
SHARDS_COLUMNS = ("shard_dir", "recipe", "recipe_sha256", "path", "stage", "substage", "split", "seq_len", "n_sequences",
                  "n_tokens", "sha256", "tokens_per_subset", "tokens_per_source")


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
            recipe, recipe_sha = manifest.get("recipe"), manifest.get("recipe_sha256")
            for s in manifest["shards"]:
                rows.append({"shard_dir": shard_dir, "recipe": None if recipe is None else str(recipe),
                             "recipe_sha256": None if recipe_sha is None else str(recipe_sha),
                             "path": s["path"], "stage": s["stage"],
                             "substage": s["substage"], "split": s["split"], "seq_len": int(s["seq_len"]),
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
    """The query layer's connection (:func:`xgen_data.query.connect`) plus the ``shards`` view.

    Args:
        shard_dirs: extra shards directories for the ``shards`` view, besides those registered by
            ``xgen mix build`` in ``corpus.json``.
        recipe: a :class:`xgen_data.mixing.recipe.Recipe` whose decisions ``documents`` shows; None = the corpus
            defaults (:func:`xgen_data.mixing.decisions.from_defaults`). ``dec``: explicit
            :class:`xgen_data.query.Decisions` instead.
        quiet: do not print warnings (stale default decisions) on stderr.
    Raises:
        as :func:`xgen_data.query.connect`.
    """
    corpus = Corpus(corpus_dir)
    if dec is None and corpus.parts():
        dec = decisions.for_corpus(corpus, recipe)
    con = query.connect(corpus_dir, dec, quiet)
    own, note = corpus.shard_dirs()
    if note and not quiet:
        print(f"note: {note}", file=sys.stderr)
    dirs = own + [os.path.abspath(d) for d in shard_dirs or []]
    rows = shard_rows(list(dict.fromkeys(dirs)))
    # the view exists (empty) before any `xgen mix build`, so a query over it is not a catalog error
    schema = pa.schema([(k, pa.int64() if k in ("seq_len", "n_sequences", "n_tokens") else pa.string())
                        for k in SHARDS_COLUMNS])
    con.register("_shards_rows", pa.Table.from_pylist(rows, schema=schema))
    con.execute("CREATE OR REPLACE VIEW shards AS SELECT * FROM _shards_rows")
    return con


def _kind_sql() -> str:
    """SQL for each language's kind (:func:`xgen_data.attributes.languages.kind`) from the shipped table."""
    whens = " ".join(f"WHEN language IN ({', '.join(repr(k) for k in languages.keys_of_kind(kind))}) THEN '{kind}'"
                     for kind in languages.KINDS)
    return f"CASE {whens} ELSE '-' END"


_KIND_SQL = _kind_sql()

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
    ("Code: tokens per language (kind: one of StarCoder's 86, a data format, an extra; how identified; "
     "disagreements with the source)", f"""SELECT subset,
        coalesce(language, '(unknown)') AS language, {_KIND_SQL} AS kind, count(*) AS documents, sum(n_tokens) AS tokens,
        sum(n_tokens) FILTER (kept) AS kept_tokens, count(*) FILTER (language_source IS NOT NULL) AS from_source,
        count(*) FILTER (language_how = 'extension' OR language_how = 'filename') AS by_name,
        count(*) FILTER (language_how = 'shebang') AS by_shebang,
        count(*) FILTER (language_how IN ('unknown', 'ambiguous')) AS unidentified,
        count(*) FILTER (language_disagrees) AS disagree
        FROM documents WHERE license_policy IS NOT NULL
            OR subset IN (SELECT DISTINCT subset FROM documents WHERE language_is_code)
        GROUP BY ALL ORDER BY subset, tokens DESC"""),
    ("Code: languages present by kind (of StarCoder's 86 programming languages, 2 data formats, 1 extra)",
     f"""SELECT subset, {_KIND_SQL} AS kind, count(DISTINCT language) AS languages, count(*) AS documents,
        sum(n_tokens) AS tokens FROM documents WHERE language_is_code GROUP BY ALL ORDER BY subset, kind"""),
    ("License decisions by source and policy", """SELECT subset, coalesce(source, '') AS source,
        coalesce(license_policy, '(none)') AS policy, decision, count(*) AS documents, sum(n_tokens) AS tokens,
        arg_max(reason, n_tokens) FILTER (decision = 'fail') AS largest_fail_reason
        FROM documents WHERE license_policy IS NOT NULL GROUP BY ALL ORDER BY subset, source, policy, decision"""),
    ("Document length in tokens (quantiles)", """SELECT subset, min(n_tokens) AS min,
        quantile_disc(n_tokens, 0.1) AS p10, quantile_disc(n_tokens, 0.5) AS p50,
        quantile_disc(n_tokens, 0.9) AS p90, quantile_disc(n_tokens, 0.99) AS p99, max(n_tokens) AS max
        FROM documents GROUP BY subset ORDER BY subset"""),
    ("Drops by reason", """SELECT subset, coalesce(drop_reason, '(kept)') AS reason, count(*) AS documents,
        sum(n_tokens) AS tokens FROM documents GROUP BY ALL ORDER BY subset, documents DESC"""),
]


class ReadOnlyError(RefusedError):
    """An ``xgen sql`` statement that is not a read-only query (COPY, ATTACH, CREATE, SET, ...)."""


#: What each refused statement type does, for the message (DuckDB's ``StatementType`` names).
_REFUSED_WHY = {
    "COPY": "writes or reads files", "COPY_DATABASE": "copies a database", "EXPORT": "writes files",
    "ATTACH": "opens or creates a database file", "DETACH": "changes attached databases",
    "LOAD": "installs or loads an extension", "EXTENSION": "installs or loads an extension",
    "CREATE": "creates an object", "CREATE_FUNC": "creates a function", "INSERT": "changes data",
    "UPDATE": "changes data", "DELETE": "changes data", "MERGE_INTO": "changes data", "DROP": "drops an object",
    "ALTER": "changes an object", "SET": "changes a setting", "VARIABLE_SET": "changes a variable",
    "PRAGMA": "runs a pragma (which may change settings or files)", "CALL": "calls a procedure (which may write)",
    "VACUUM": "rewrites storage", "ANALYZE": "updates statistics", "TRANSACTION": "controls transactions",
    "PREPARE": "prepares a statement", "EXECUTE": "runs a prepared statement",
    "UNKNOWN": "is not a statement kind xgen sql knows", "MULTI": "runs several statements (a PIVOT without an IN list creates types: list its values with IN (...))",
}
_EXPLAIN_PREFIX = re.compile(r"^\s*EXPLAIN\s+(?:ANALYZE\s+|\([^)]*\)\s*)?", re.IGNORECASE)


def _kind(statement) -> str:
    try:
        return statement.type.name
    except ValueError:  # a statement type the Python enum does not know (e.g. UPDATE EXTENSIONS)
        return "UNKNOWN"


def check_read_only(query: str) -> list:
    """Parse ``query`` with DuckDB's own parser and return its statements if every one only reads.

    Allowed: ``SELECT`` statements as DuckDB classifies them (also ``WITH``, ``FROM``, ``VALUES``,
    ``DESCRIBE``, ``SHOW``, ``SUMMARIZE``, ``PIVOT ... IN (...)``) and ``EXPLAIN [ANALYZE]`` of one. Everything
    else is refused: COPY, EXPORT/IMPORT, ATTACH/DETACH, INSTALL/LOAD, CREATE, INSERT/UPDATE/DELETE/MERGE,
    DROP, ALTER, SET/RESET/USE, PRAGMA, CALL and CHECKPOINT, VACUUM, ANALYZE, transactions, PREPARE/EXECUTE.

    Returns:
        ``list[duckdb.Statement]`` in order (empty for a blank query).
    Raises:
        ReadOnlyError: names the first refused statement (its number, kind and first words).
        duckdb.ParserException: the text is not valid SQL.
    """
    statements = duckdb.extract_statements(query)
    for i, st in enumerate(statements, 1):
        kind = _kind(st)
        if kind == "SELECT":
            continue
        if kind == "EXPLAIN":
            inner = _EXPLAIN_PREFIX.sub("", st.query, count=1)
            inner_st = duckdb.extract_statements(inner) if inner != st.query else []
            inner_kind = _kind(inner_st[0]) if len(inner_st) == 1 else "a non-query"
            if inner_kind == "SELECT":
                continue
            kind = f"EXPLAIN of {inner_kind}"
        words = " ".join(st.query.split())
        head = words if len(words) <= 60 else words[:57] + "..."
        why = _REFUSED_WHY.get(kind.removeprefix("EXPLAIN of "), "is not a query")
        raise ReadOnlyError(f"xgen sql is read-only: statement {i} ({kind}: {head!r}) is refused, it {why}. "
                            "Only queries run (SELECT, WITH, FROM, VALUES, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN); "
                            "to save results, redirect --format csv or json to a file outside the corpus")
    return statements


def lock_down(con, corpus_root: str) -> None:
    """Make ``con`` (from :func:`connect`) unable to touch anything but the corpus's data folders.

    After :func:`connect` has created the views: DuckDB may only open files under the corpus's
    sub-folders (``allowed_directories`` with ``enable_external_access=false``: the views read the Parquet
    files there; nothing elsewhere can be read or written, not even ``corpus.json`` or the corpus folder
    itself), cannot install or auto-load extensions, keeps spill files in a private temporary folder,
    and ``lock_configuration`` then freezes every setting. DuckDB cannot allow reads without writes
    inside an allowed folder, so writes into ``docs/`` or ``attributes/`` are kept out by
    :func:`check_read_only`, which refuses every statement that is not a query; this is the second layer.

    Raises:
        duckdb.Error: the settings could not be applied (then the connection must not be used).
    """
    root = os.path.abspath(corpus_root)
    folders = sorted(os.path.join(root, e.name) + os.sep for e in os.scandir(root)
                     if e.is_dir(follow_symlinks=False) and not e.name.startswith("."))
    spill = spill_dir()
    con.execute("SET allowed_directories = ?", [folders])
    for setting, value in (("autoinstall_known_extensions", False), ("autoload_known_extensions", False),
                           ("allow_community_extensions", False), ("allow_persistent_secrets", False),
                           ("temp_directory", spill), ("enable_external_access", False),
                           ("lock_configuration", True)):
        con.execute(f"SET {setting} = ?", [value])
