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
  with (its manifest also holds the full TOML text; NULL for folders built before they were recorded).
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
import shutil
import sys
import tempfile

import duckdb

from xgen_data.errors import InputError, RefusedError
from xgen_data.mixing import decisions
from xgen_data.shards import shard_format as shards
from xgen_data.store import fsutil
from xgen_data.store.corpus import Corpus

SUBSET_FROM_PATH = decisions.SUBSET_FROM_PATH

#: DuckDB's memory limit for every connection the product opens (views, reports, the mixture build, dedup's
#: phase 2), unless ``XGEN_DUCKDB_MEMORY`` says otherwise (a DuckDB size: ``512MB``, ``4GB``). Beyond it DuckDB
#: spills joins, sorts and aggregates to a private temporary folder, so a query over a corpus of any size holds
#: about this much plus its result. An operator that cannot spill and needs more fails with DuckDB's
#: out-of-memory error; raise the limit then.
DEFAULT_MEMORY_LIMIT = "512MB"


def _size_env(name: str, default: str | None) -> str | None:
    value = os.environ.get(name, "").strip() or default
    if value is not None and not re.fullmatch(r"\d+(\.\d+)?\s*(B|KB|KiB|MB|MiB|GB|GiB|TB|TiB)", value,
                                              flags=re.IGNORECASE):
        raise InputError(f"{name}={value!r} is not a size such as 512MB or 4GB")
    return value


def memory_limit() -> str:
    """The DuckDB memory limit in force: ``XGEN_DUCKDB_MEMORY`` or :data:`DEFAULT_MEMORY_LIMIT`.

    Raises:
        ValueError: ``XGEN_DUCKDB_MEMORY`` is not a size such as ``512MB`` or ``4GB``.
    """
    return _size_env("XGEN_DUCKDB_MEMORY", DEFAULT_MEMORY_LIMIT)


#: Default cap of a connection's spill folder: at most this, and at most :data:`SPILL_FREE_FRACTION` of the free
#: disk where it lies (so the default can never fill a disk), unless ``XGEN_DUCKDB_SPILL`` says otherwise.
DEFAULT_SPILL_CAP = "20GB"
SPILL_FREE_FRACTION = 0.5
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
          "tib": 2**40}


def size_bytes(text: str) -> int:
    """Bytes of a DuckDB size such as ``512MB`` (KB, MB, GB, TB: powers of 1000; KiB, MiB, GiB, TiB: of 1024)."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([A-Za-z]+)", text.strip())
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def spill_cap(folder: str) -> int:
    """The spill cap in bytes for a spill folder: ``XGEN_DUCKDB_SPILL``, else the smaller of
    :data:`DEFAULT_SPILL_CAP` and :data:`SPILL_FREE_FRACTION` of the disk free at ``folder`` (or the nearest
    folder above it that exists). :func:`xgen_data.stats.query_guard.guard` enforces it.

    Raises:
        ValueError: ``XGEN_DUCKDB_SPILL`` is not a size.
    """
    if given := _size_env("XGEN_DUCKDB_SPILL", None):
        return size_bytes(given)
    probe = os.path.abspath(folder)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    return min(size_bytes(DEFAULT_SPILL_CAP), int(shutil.disk_usage(probe).free * SPILL_FREE_FRACTION))


def duckdb_config(temp_directory: str, memory: str | None = None) -> dict:
    """DuckDB settings of every connection the product opens: :func:`memory_limit` (or ``memory``), the spill
    folder, and its cap (:func:`spill_cap`; DuckDB stores it but does not enforce it for every operator, so
    queries run under :func:`xgen_data.stats.query_guard.guard` with the same cap).

    Raises:
        ValueError: ``XGEN_DUCKDB_MEMORY`` or ``XGEN_DUCKDB_SPILL`` is not a size.
    """
    return {"memory_limit": memory or memory_limit(), "temp_directory": temp_directory,
            "max_temp_directory_size": f"{spill_cap(temp_directory)}B"}


_SPILL_PREFIX = "xgen-sql-"
_SWEPT: list[bool] = []


def spill_dir() -> str:
    """This process's private DuckDB spill folder (under the system temporary folder; DuckDB removes its files
    when the connection closes). The first call of a process deletes the folders of processes that are gone
    (a query killed with ``kill -9`` leaves its spill files, up to gigabytes, behind)."""
    tmp = tempfile.gettempdir()
    if not _SWEPT:
        _SWEPT.append(True)
        _sweep_spill_dirs(tmp)
    return os.path.join(tmp, f"{_SPILL_PREFIX}{os.getpid()}")


def _sweep_spill_dirs(tmp: str) -> None:
    for name in os.listdir(tmp) if os.path.isdir(tmp) else []:
        pid = name[len(_SPILL_PREFIX):]
        if (name.startswith(_SPILL_PREFIX) and pid.isdigit() and int(pid) != os.getpid()
                and not fsutil.pid_alive(int(pid))):
            shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)


def _q(path: str) -> str:
    return "'" + path.replace("'", "''") + "'"


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
                             "substage": s["substage"], "split": s.get("split", "train"), "seq_len": int(s["seq_len"]),
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

    The connection holds at most :func:`memory_limit` (DuckDB spills beyond it to :func:`spill_dir`), so
    views over a large corpus do not need memory in proportion to it.

    Args:
        shard_dirs: extra shards directories for the ``shards`` view, besides those registered by
            ``xgen mix build`` in ``corpus.json``.
        recipe: a :class:`xgen_data.mixing.recipe.Recipe` whose decisions ``documents`` shows; None = the corpus
            defaults (:func:`xgen_data.mixing.decisions.from_defaults`). ``dec``: explicit
            :class:`xgen_data.mixing.decisions.Decisions` instead.
        quiet: do not print warnings (stale default decisions) on stderr.
    Raises:
        CorpusError: not a corpus, a corpus with no documents, or (with a recipe) its attributes are missing or
            out of date (the message says to run ``xgen mix plan``). DamagedPartError /
            DamagedAttributeError: a part or a committed attribute file differs from its recorded SHA-256.
    """
    corpus = Corpus(corpus_dir)
    if not corpus.parts():
        from xgen_data.store.corpus import CorpusError

        raise CorpusError(f"{corpus_dir}: corpus has no documents; run `xgen ingest` first")
    corpus.verify_parts(warn=not quiet)  # the views read the parts: never show damaged bytes
    if dec is None:
        dec = decisions.for_corpus(corpus, recipe)
    view, warnings = decisions.documents_sql(corpus, dec, strict=dec.recipe_name is not None)
    for w in warnings if not quiet else ():
        print(f"warning: {w}", file=sys.stderr)
    con = duckdb.connect(":memory:", config=duckdb_config(spill_dir()))
    # Joins build their hash table on the right side as written. DuckDB estimates a positional join (the
    # documents view) at ~0 rows, so its build-side swap would put every document into the hash table of the
    # dedup keep rule's join with the (far smaller) table of kept copies: memory in proportion to the corpus.
    con.execute("SET disabled_optimizers = 'build_side_probe_side'")
    con.execute(view)
    con.execute(decisions.LICENSE_CONFLICTS_SQL)
    dirs = list(corpus.read_meta().get("shard_dirs", [])) + [os.path.abspath(d) for d in shard_dirs or []]
    rows = shard_rows(list(dict.fromkeys(dirs)))
    import pyarrow as pa

    # the view exists (empty) before any `xgen mix build`, so a query over it is not a catalog error
    schema = pa.schema([(k, pa.int64() if k in ("seq_len", "n_sequences", "n_tokens") else pa.string())
                        for k in SHARDS_COLUMNS])
    con.register("_shards_rows", pa.Table.from_pylist(rows, schema=schema))
    con.execute("CREATE OR REPLACE VIEW shards AS SELECT * FROM _shards_rows")
    return con


def _kind_sql() -> str:
    """SQL for each language's kind (:func:`xgen_data.attributes.languages.kind`) from the shipped table."""
    from xgen_data.attributes import languages

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
    import duckdb

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
    inside an allowed folder, so writes into ``docs/`` or ``steps/`` are kept out by
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
