"""xgen sql is read-only (DuckDB's parser + a locked connection); every result type prints in every format."""
import csv
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from decimal import Decimal

import duckdb
import pytest
from click.testing import CliRunner

from cli.main import cli
from xgen_data.stats import sql
from xgen_data.store import duckdb_settings


@pytest.fixture(scope="module")
def ro_corpus(sample_corpus, tmp_path_factory):
    """A private copy of the sample corpus (a failing guard must not damage the shared fixture)."""
    dst = str(tmp_path_factory.mktemp("ro") / "corpus")
    shutil.copytree(sample_corpus, dst)
    return dst


def _tree_digest(root: str) -> dict[str, str]:
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
        out.update({os.path.relpath(os.path.join(folder, d), root) + "/": "dir" for d in dirs})
    return out


def _run(*args):
    """Invoke the CLI; an exception other than click's own exit would be a traceback for the user."""
    res = CliRunner().invoke(cli, list(args))
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    return res


# (statement, kind named in the message); {part} / {root} are filled in with the corpus's paths.
REFUSED = [
    ("COPY (SELECT * FROM documents LIMIT 50) TO '{part}' (FORMAT parquet)", "COPY"),
    ("COPY (SELECT subset, id FROM documents) TO '{root}' (FORMAT parquet, PARTITION_BY (subset), OVERWRITE)", "COPY"),
    ("COPY (SELECT 1) TO '{root}/docs/x.csv'", "COPY"),
    ("EXPLAIN ANALYZE COPY (SELECT 1) TO '{part}'", "EXPLAIN of COPY"),
    ("EXPORT DATABASE '{root}/export'", "EXPORT"),
    ("IMPORT DATABASE '{root}/export'", "PRAGMA"),
    ("ATTACH '{root}/new.duckdb' AS x", "ATTACH"),
    ("DETACH memory", "DETACH"),
    ("INSTALL httpfs", "LOAD"),
    ("LOAD httpfs", "LOAD"),
    ("CREATE TABLE t AS SELECT 1", "CREATE"),
    ("CREATE OR REPLACE VIEW documents AS SELECT 1", "CREATE"),
    ("CREATE SECRET s (TYPE s3, KEY_ID 'k', SECRET 's')", "CREATE"),
    ("CREATE MACRO m(x) AS x + 1", "CREATE"),
    ("INSERT INTO t VALUES (1)", "INSERT"),
    ("UPDATE t SET a = 1", "UPDATE"),
    ("DELETE FROM t", "DELETE"),
    ("DROP VIEW documents", "DROP"),
    ("ALTER VIEW documents RENAME TO d2", "ALTER"),
    ("SET threads = 1", "SET"),
    ("RESET threads", "SET"),
    ("SET enable_external_access = true", "SET"),
    ("USE memory", "SET"),
    ("PRAGMA enable_profiling", "PRAGMA"),
    ("CALL pragma_version()", "CALL"),
    ("CHECKPOINT", "CALL"),
    ("VACUUM", "VACUUM"),
    ("ANALYZE", "ANALYZE"),
    ("BEGIN TRANSACTION", "TRANSACTION"),
    ("PREPARE p AS SELECT 1", "PREPARE"),
    ("EXECUTE p", "EXECUTE"),
    ("PIVOT documents ON subset USING count(*)", "MULTI"),
    ("UPDATE EXTENSIONS", "UNKNOWN"),
    ("COMMENT ON VIEW documents IS 'x'", "ALTER"),
    ("SET VARIABLE x = 1", "SET"),
    ("TRUNCATE documents", "DELETE"),
    ("SELECT 1; COPY (SELECT 1) TO '{part}'", "statement 2 (COPY"),
]


@pytest.mark.parametrize("stmt,kind", REFUSED, ids=[s[:40] for s, _ in REFUSED])
def test_refused_statements_leave_the_corpus_byte_identical(ro_corpus, stmt, kind):
    from xgen_data.store.corpus import Corpus

    part = Corpus(ro_corpus).parts("natural")[0].path
    before = _tree_digest(ro_corpus)
    res = _run("sql", "--corpus", ro_corpus, stmt.format(part=part, root=ro_corpus))
    assert res.exit_code == 2, res.output  # a refused action
    assert "read-only" in res.output and kind in res.output and "Traceback" not in res.output
    assert _tree_digest(ro_corpus) == before


def test_locked_connection_refuses_files_outside_the_data_folders(ro_corpus):
    """The second layer alone (no parser check): DuckDB itself refuses writes and reads outside docs/, steps/."""
    before = _tree_digest(ro_corpus)
    con = sql.connect(ro_corpus)
    sql.lock_down(con, ro_corpus)
    assert con.execute("SELECT count(*) FROM documents").fetchone()[0] == 1116
    for stmt in (f"COPY (SELECT subset, id FROM documents) TO '{ro_corpus}' (FORMAT parquet, PARTITION_BY (subset), OVERWRITE)",
                 f"COPY (SELECT 1) TO '{ro_corpus}/corpus.json'", f"SELECT * FROM read_text('{ro_corpus}/corpus.json')",
                 f"ATTACH '{ro_corpus}/x.duckdb'", "SELECT * FROM read_csv('/etc/passwd')", "INSTALL httpfs",
                 f"EXPORT DATABASE '{ro_corpus}/export'"):
        with pytest.raises(duckdb.Error, match="disabled by configuration|Permission"):
            con.execute(stmt)
    with pytest.raises(duckdb.Error, match="locked"):
        con.execute("SET enable_external_access = true")
    assert _tree_digest(ro_corpus) == before


@pytest.mark.parametrize("stmt", [
    "SELECT * FROM query('COPY (SELECT 1) TO ''{part}''')",
    "SELECT * FROM read_text('{root}/corpus.json')",
    "SELECT * FROM glob('/etc/*')",
    "SELECT * FROM checkpoint()",
    "SELECT * FROM force_checkpoint()",
])
def test_table_functions_cannot_write_or_escape(ro_corpus, stmt):
    from xgen_data.store.corpus import Corpus

    part = Corpus(ro_corpus).parts("natural")[0].path
    before = _tree_digest(ro_corpus)
    res = _run("sql", "--corpus", ro_corpus, stmt.format(part=part, root=ro_corpus))
    assert "Traceback" not in res.output
    assert res.exit_code in (0, 2, 3), res.output
    if "corpus.json" in stmt or "glob" in stmt:  # a file outside the views: refused (exit 2)
        assert res.exit_code == 2 and "SQL error" in res.output
    if "query(" in stmt:  # a write inside query(): not a query DuckDB accepts there (bad input, exit 3)
        assert res.exit_code == 3 and "SQL error" in res.output
    assert _tree_digest(ro_corpus) == before


@pytest.mark.parametrize("stmt", ["SELECT count(*) FROM documents", "WITH a AS (SELECT 1 AS x) SELECT * FROM a",
                                  "FROM documents SELECT subset LIMIT 1", "VALUES (1, 'a')", "DESCRIBE documents",
                                  "SHOW TABLES", "SUMMARIZE SELECT n_tokens FROM documents",
                                  "PIVOT documents ON subset IN ('code', 'natural') USING count(*)",
                                  "EXPLAIN SELECT count(*) FROM documents", "SELECT 1 -- trailing comment",
                                  "SELECT 1;"])
def test_queries_run(sample_corpus, stmt):
    res = _run("sql", "--corpus", sample_corpus, "--format", "json", stmt)
    assert res.exit_code == 0, res.output
    assert isinstance(json.loads(res.stdout), list)


def test_check_read_only_uses_duckdbs_parser():
    assert [s.type.name for s in sql.check_read_only("SELECT 1; FROM range(3)")] == ["SELECT", "SELECT"]
    with pytest.raises(sql.ReadOnlyError, match=r"statement 1 \(COPY"):
        sql.check_read_only("/* a comment */ copy (select 1) to 'x.csv'")
    with pytest.raises(duckdb.ParserException):
        sql.check_read_only("SELEC 1")


TZ = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)?[+-]\d\d(:\d\d)?$")
# (SQL expression, text in table and CSV, value in JSON); None text = NULL
TYPES = [
    ("now()", TZ, TZ),
    ("TIMESTAMPTZ '2024-01-02 03:04:05+00' - TIMESTAMPTZ '2024-01-01 00:00:00+00'", "1 day 03:04:05", "1 day 03:04:05"),
    ("INTERVAL '1 month 2 days 3 hours'", "1 month 2 days 03:00:00", "1 month 2 days 03:00:00"),
    ("'12345678-1234-5678-1234-567812345678'::UUID", "12345678-1234-5678-1234-567812345678",
     "12345678-1234-5678-1234-567812345678"),
    ("CAST('12345678901234567890.123456' AS DECIMAL(38, 6))", "12345678901234567890.123456",
     Decimal("12345678901234567890.123456")),
    ("1.5", "1.5", Decimal("1.5")),
    ("'\\x00\\xff'::BLOB", "\\x00\\xFF", "\\x00\\xFF"),
    ("[1, NULL, 3]", "[1, NULL, 3]", [1, None, 3]),
    ("{'a': 1, 'b': 'x'}", "{'a': 1, 'b': x}", {"a": 1, "b": "x"}),
    ("MAP {1: 'x', 2: 'y'}", "{1=x, 2=y}", {"1": "x", "2": "y"}),
    ("[{'k': MAP {'m': [DATE '2024-01-01']}}]", "[{'k': {m=[2024-01-01]}}]", [{"k": {"m": ["2024-01-01"]}}]),
    ("170141183460469231731687303715884105727::HUGEINT", "170141183460469231731687303715884105727",
     170141183460469231731687303715884105727),
    ("DATE '2024-02-29'", "2024-02-29", "2024-02-29"),
    ("TIME '12:34:56.789'", "12:34:56.789", "12:34:56.789"),
    ("TIMESTAMP '2024-01-01 00:00:00'", "2024-01-01 00:00:00", "2024-01-01 00:00:00"),
    ("NULL", None, None),
    ("CAST(NULL AS INTEGER)", None, None),
    ("true", "true", True),
    ("'nan'::DOUBLE", "nan", "NaN"),
    ("['inf'::DOUBLE, 2.5]", "[inf, 2.5]", ["Infinity", Decimal("2.5")]),
    ("'héllo, \"world\"'", "héllo, \"world\"", "héllo, \"world\""),
]


def _match(got, want):
    if isinstance(want, re.Pattern):
        return isinstance(got, str) and bool(want.match(got))
    return got == want and type(got) is type(want)


@pytest.mark.parametrize("fmt", ["table", "csv", "json"])
@pytest.mark.parametrize("expr,text,value", TYPES, ids=[t[0][:30] for t in TYPES])
def test_every_duckdb_type_prints(sample_corpus, fmt, expr, text, value):
    res = _run("sql", "--corpus", sample_corpus, "--format", fmt, f"SELECT 7 AS k, {expr} AS v")
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    if fmt == "json":
        rows = json.loads(res.stdout, parse_float=Decimal)
        assert rows[0]["k"] == 7 and _match(rows[0]["v"], value), rows
    elif fmt == "csv":
        rows = list(csv.reader(io.StringIO(res.stdout)))
        assert rows[0] == ["k", "v"] and rows[1][0] == "7"
        assert _match(rows[1][1], "" if text is None else text), rows
    else:
        lines = res.stdout.splitlines()
        assert lines[0].split()[:2] == ["k", "v"]
        cell = lines[2].split("  ", 1)[1].strip()
        if type(value) is int:  # tables group digits: 1,234
            cell = cell.replace(",", "")
        assert _match(cell, "NULL" if text is None else text), lines


@pytest.mark.parametrize("stmt,msg", [("SELECT nope FROM documents", "Referenced column"),
                                      ("SELEC 1", "syntax error"), ("SELECT 1/0::INTEGER + 'x'", "SQL error"),
                                      ("SELECT * FROM nope", "nope")])
def test_errors_are_clean(sample_corpus, stmt, msg):
    for fmt in ("table", "json"):
        res = _run("sql", "--corpus", sample_corpus, "--format", fmt, stmt)
        assert res.exit_code == 3 and msg in res.output and "Traceback" not in res.output, res.output
        assert not isinstance(res.exception, Exception) or isinstance(res.exception, SystemExit)


def test_one_statement_per_call(sample_corpus):
    res = _run("sql", "--corpus", sample_corpus, "SELECT 1; SELECT 2")
    assert res.exit_code == 2 and "one statement" in res.output


def test_duplicate_column_names_stay_distinct_in_json(sample_corpus):
    res = _run("sql", "--corpus", sample_corpus, "--format", "json", "SELECT 1 AS a, 2 AS a, [3] AS a")
    assert json.loads(res.stdout) == [{"a": 1, "a_1": 2, "a_2": [3]}]


def test_stats_json_is_one_document(sample_corpus):
    res = _run("stats", "--corpus", sample_corpus, "--format", "json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["corpus"] == os.path.abspath(sample_corpus)
    tables = {t["title"]: t["rows"] for t in doc["tables"]}
    per_subset = {r["subset"]: r["documents"] for r in tables["Documents and tokens per subset"]}
    assert per_subset == {"code": 73, "instruct": 586, "natural": 457}
    assert any(r["reason"] == "too_few_tokens" for r in tables["Drops by reason"])


@pytest.mark.parametrize("args", [["sql", "--format", "csv", "SELECT * FROM range(300000)"], ["stats"],
                                  ["stats", "--format", "json"]])
def test_closed_pipe_exits_quietly(sample_corpus, args):
    """``xgen ... | head -1``: the reader is gone before the first write; no BrokenPipeError trace."""
    r, w = os.pipe()
    os.close(r)
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-c", "from cli.main import cli; cli()", args[0], "--corpus", sample_corpus,
                           *args[1:]], stdout=w, stderr=subprocess.PIPE, env=env, timeout=120)
    os.close(w)
    err = proc.stderr.decode()
    # stderr holds only the line naming whose decisions the views show (xgen_data.query.describe)
    assert proc.returncode == 1 and all(line.startswith("decisions: ") for line in err.splitlines()), err


@pytest.mark.parametrize("cmd", [["stats"], ["stats", "--format", "json"], ["stats", "--plot", "x.png"],
                                 ["sql", "SELECT count(*) FROM documents"]])
def test_truncated_part_is_a_clean_error(corpus_copy, cmd, tmp_path):
    from xgen_data.store.corpus import Corpus

    part = Corpus(corpus_copy).parts("natural")[0].path
    data = open(part, "rb").read()
    open(part, "wb").write(data[: len(data) // 2])
    args = [a if a != "x.png" else str(tmp_path / "x.png") for a in cmd]
    res = _run(args[0], "--corpus", corpus_copy, *args[1:])
    assert res.exit_code == 3 and "Traceback" not in res.output, res.output
    assert os.path.basename(part) in res.output and "xgen ingest" in res.output


def test_connections_hold_duckdb_to_the_memory_limit(ro_corpus, monkeypatch):
    """Every view connection is capped (XGEN_DUCKDB_MEMORY, default duckdb_settings.DEFAULT_MEMORY_LIMIT) and spills to a
    private folder, so a query over a large corpus does not need memory in proportion to it."""
    def limit_of(con):
        return con.execute("SELECT current_setting('memory_limit')").fetchone()[0]

    monkeypatch.delenv("XGEN_DUCKDB_MEMORY", raising=False)
    default = limit_of(sql.connect(ro_corpus, quiet=True))
    monkeypatch.setenv("XGEN_DUCKDB_MEMORY", "300MB")
    con = sql.connect(ro_corpus, quiet=True)
    assert limit_of(con) != default and limit_of(con).startswith("286")  # DuckDB shows 300 MB as 286.1 MiB
    assert con.execute("SELECT current_setting('temp_directory')").fetchone()[0] == duckdb_settings.spill_dir()
    assert con.execute("SELECT count(*) FROM documents").fetchone()[0] > 0
    monkeypatch.setenv("XGEN_DUCKDB_MEMORY", "lots")
    with pytest.raises(ValueError, match="XGEN_DUCKDB_MEMORY"):
        sql.connect(ro_corpus, quiet=True)


def test_table_cuts_long_values_and_keeps_rows_on_one_line(sample_corpus):
    """A document's text in a table is cut and its line breaks escaped; CSV and JSON print it whole."""
    from xgen_data.stats import sql_results

    q = "SELECT id, text FROM documents WHERE length(text) > 500 AND contains(text, chr(10)) ORDER BY id LIMIT 2"
    table = CliRunner().invoke(cli, ["sql", "--corpus", sample_corpus, q])
    assert table.exit_code == 0, table.output
    lines = [ln for ln in table.stdout.splitlines() if ln.strip()]
    assert len(lines) == 2 + 2 + 1  # header, rule, two rows, the note
    assert max(len(ln) for ln in lines[2:4]) <= 2 * sql_results.TABLE_CELL_CHARS and "…" in lines[2]
    assert "--format csv or json prints them whole" in lines[-1]
    rows = json.loads(CliRunner().invoke(cli, ["sql", "--corpus", sample_corpus, "--format", "json", q]).stdout)
    assert len(rows) == 2 and all(len(r["text"]) > 500 and "\n" in r["text"] for r in rows)
    plan = CliRunner().invoke(cli, ["sql", "--corpus", sample_corpus, "EXPLAIN " + q])
    assert plan.exit_code == 0 and "…" not in plan.output and plan.output.count("\n") > 5  # a plan prints whole


def test_spill_cap_from_the_environment(sample_corpus, monkeypatch):
    monkeypatch.setenv("XGEN_DUCKDB_SPILL", "3GB")
    con = sql.connect(sample_corpus, quiet=True)
    assert con.execute("SELECT current_setting('max_temp_directory_size')").fetchone()[0].startswith("2.7 GiB")
    monkeypatch.setenv("XGEN_DUCKDB_SPILL", "lots")
    with pytest.raises(ValueError, match="XGEN_DUCKDB_SPILL='lots' is not a size"):
        sql.connect(sample_corpus, quiet=True)
