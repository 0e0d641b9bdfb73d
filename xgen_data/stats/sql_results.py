"""Print DuckDB query results of every type as a text table, CSV or JSON (for ``xgen sql`` and ``xgen stats``).

DuckDB's Python conversion of some types is lossy or needs extra modules (``INTERVAL '1 month'`` becomes 30
days, ``TIMESTAMPTZ`` needs ``pytz``, ``BLOB`` becomes ``b'...'``, ``MAP`` and ``STRUCT`` both become dicts).
So only booleans, integers (to ``HUGEINT``), floating point numbers and strings travel as Python values;
every other column is converted by DuckDB itself, in the same query:

* table and CSV: ``CAST(col AS VARCHAR)``, DuckDB's own text (``1 month 2 days``, ``\\x00\\xFF``,
  ``{'a': 1}``, ``{1=x}``, ``2024-01-01 00:00:00+00``), NULL shown as ``NULL`` in tables and empty in CSV;
* JSON: ``to_json(col)``, embedded as is, so ``DECIMAL(38, 6)`` and ``HUGEINT`` stay exact numbers, lists,
  structs and maps become arrays and objects, and everything else a string. JSON has no NaN or infinity:
  those floats are written as the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``.

Rows are fetched in batches of :data:`BATCH_ROWS` and CSV / JSON are written as they arrive; a table needs
its rows to align its columns, so it shows at most :data:`TABLE_MAX_ROWS` (or ``max_rows``) and says so.
"""
from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import IO

BATCH_ROWS = 10_000
#: DuckDB type ids whose Python values print exactly as they are.
NATIVE = frozenset({"boolean", "tinyint", "smallint", "integer", "bigint", "hugeint", "utinyint", "usmallint",
                    "uinteger", "ubigint", "uhugeint", "float", "double", "varchar"})
#: Type ids right-aligned in a table.
NUMERIC = frozenset(NATIVE - {"boolean", "varchar"} | {"decimal"})
_SPECIAL_FLOAT = re.compile(r"NaN|Infinity")


@dataclass
class Result:
    """A query's columns, DuckDB type ids and rows (batches of tuples, converted for one output format)."""

    columns: list[str]
    type_ids: list[str]
    batches: Iterator[list[tuple]]
    whole: bool = False  #: a table shows values uncut, line breaks included (an EXPLAIN plan)


def query(con, sql: str, fmt: str, explain: bool = False) -> Result:
    """Run one read-only statement ``sql`` on ``con`` with its columns converted for ``fmt``.

    Args:
        fmt: ``"table"``, ``"csv"`` or ``"json"`` (JSON columns of non-native types hold JSON text).
        explain: the statement is an ``EXPLAIN`` (which cannot be a sub-query; its columns are text).
    Raises:
        duckdb.Error: the statement does not bind or fails; binding errors quote the user's own text.
    """
    if explain:  # EXPLAIN [ANALYZE] runs once; its columns are text
        res = con.execute(sql)
        return Result([d[0] for d in res.description], ["varchar"] * len(res.description), _fetch(res), whole=True)
    rel = con.sql(sql)  # binds (names, types) without running it; errors point into the user's text
    columns, type_ids = list(rel.columns), [t.id for t in rel.types]
    if all(t in NATIVE for t in type_ids):
        return Result(columns, type_ids, _fetch(con.execute(sql)))
    exprs = []
    for i, t in enumerate(type_ids, 1):
        if t in NATIVE:
            exprs.append(f"#{i}")
        elif fmt == "json":
            exprs.append(f"CAST(to_json(#{i}) AS VARCHAR)")
        else:
            exprs.append(f"CAST(#{i} AS VARCHAR)")
    body = sql.strip().rstrip(";")
    wrapped = f"SELECT {', '.join(exprs)} FROM (\n{body}\n) AS _xgen_q"  # newlines: a trailing -- comment stays one
    return Result(columns, type_ids, _fetch(con.execute(wrapped)))


def _fetch(res) -> Iterator[list[tuple]]:
    while batch := res.fetchmany(BATCH_ROWS):
        yield batch


def unique_names(columns: list[str]) -> list[str]:
    """Column names made unique as DuckDB does for sub-queries (``a, a`` -> ``a, a_1``), for JSON keys."""
    seen: set[str] = set()
    out = []
    for name in columns:
        new, k = name, 0
        while new in seen:
            k += 1
            new = f"{name}_{k}"
        seen.add(new)
        out.append(new)
    return out


#: Rows a table shows by default: a table aligns its columns, so it holds its rows in memory; beyond this
#: it stops fetching and says so (CSV and JSON stream every row).
TABLE_MAX_ROWS = 10_000


def write(result: Result, fmt: str, out: IO[str], title: str | None = None, max_rows: int = TABLE_MAX_ROWS) -> None:
    """Write ``result`` (from :func:`query` with the same ``fmt``) to ``out``.

    ``table``: aligned columns (numbers right-aligned with thousands separators), preceded by ``title``; at
    most ``max_rows`` rows (the rest is not fetched; a notice says so); ``csv``: RFC 4180 via :mod:`csv`,
    header first, NULL empty; ``json``: one array of objects, one per row (both streamed, every row).
    """
    if fmt == "json":
        write_json_rows(result, out)
        out.write("\n")
    elif fmt == "csv":
        w = csv.writer(out, lineterminator="\n")
        w.writerow(result.columns)
        for batch in result.batches:
            w.writerows(tuple(_csv_cell(v) for v in row) for row in batch)
    else:
        _write_table(result, out, title, max_rows)


def write_json_rows(result: Result, out: IO[str], indent: str = "") -> None:
    """Write the rows as one JSON array of objects (keys from :func:`unique_names`), streaming."""
    keys = [json.dumps(k, ensure_ascii=False) for k in unique_names(result.columns)]
    raw = [t not in NATIVE for t in result.type_ids]
    out.write("[")
    first = True
    for batch in result.batches:
        for row in batch:
            cells = ", ".join(f"{k}: {_json_cell(v, r)}" for k, v, r in zip(keys, row, raw))
            out.write(("\n" if first else ",\n") + f"{indent} {{{cells}}}")
            first = False
    out.write("]" if first else f"\n{indent}]")


def _json_cell(v, raw: bool) -> str:
    if v is None:
        return "null"
    if raw:  # JSON text made by DuckDB's to_json
        return _exact_json(json.loads(v, parse_float=Decimal, parse_constant=str)) if _SPECIAL_FLOAT.search(v) else v
    if isinstance(v, float) and not math.isfinite(v):
        return json.dumps("NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity"))
    return json.dumps(v, ensure_ascii=False)


def _exact_json(obj) -> str:
    """JSON text of parsed JSON (decimals kept as written; NaN / Infinity constants, parsed as str, quoted)."""
    if isinstance(obj, dict):
        return "{" + ", ".join(f"{json.dumps(k, ensure_ascii=False)}: {_exact_json(v)}" for k, v in obj.items()) + "}"
    if isinstance(obj, list):
        return "[" + ", ".join(_exact_json(v) for v in obj) + "]"
    if isinstance(obj, Decimal):
        return str(obj)
    return json.dumps(obj, ensure_ascii=False)


def _csv_cell(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    return v


def _text(v) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:,.4f}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


#: Characters a table cell shows; a longer value (a document's ``text``) is cut with an ellipsis, and line
#: breaks and tabs inside a value are shown as ``\\n``, ``\\r``, ``\\t`` so one row stays one line. CSV and JSON
#: print values whole.
TABLE_CELL_CHARS = 120
_CONTROL = str.maketrans({"\n": "\\n", "\r": "\\r", "\t": "\\t"})


def _cell(v, whole: bool = False) -> tuple[str, bool]:
    """``(table text of v, whether it was cut)``."""
    text = _text(v)
    if whole:
        return text, False
    if isinstance(v, str):
        text = text.translate(_CONTROL)
    if len(text) > TABLE_CELL_CHARS:
        return text[:TABLE_CELL_CHARS - 1] + "…", True
    return text, False


def table_lines(columns: list[str], rows: list[list[str]], right: list[bool]) -> list[str]:
    """An aligned text table: header, dashes, one line per row; cells are text already, columns flagged in
    ``right`` are right-aligned (numbers), the others left-aligned; two spaces between columns, no trailing
    spaces. The one table layout of every command (``xgen sql`` and :func:`cli.common.print_rows`)."""
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]

    def line(vals) -> str:
        return "  ".join(v.rjust(w) if n else v.ljust(w) for v, w, n in zip(vals, widths, right)).rstrip()

    return [line(columns), "  ".join("-" * w for w in widths)] + [line(r) for r in rows]


def _write_table(result: Result, out: IO[str], title: str | None, max_rows: int = TABLE_MAX_ROWS) -> None:
    cut = more = False
    rows = []
    for batch in result.batches:
        for row in batch:
            if len(rows) == max_rows:
                more = True
                break
            cells = [_cell(v, result.whole) for v in row]
            cut = cut or any(c for _, c in cells)
            rows.append([t for t, _ in cells])
        if more:
            break
    if title:
        out.write(title + "\n")
    for text in table_lines(result.columns, rows, [t in NUMERIC for t in result.type_ids]):
        out.write(text + "\n")
    if cut:
        out.write(f"(values over {TABLE_CELL_CHARS} characters are cut here; --format csv or json prints them whole)\n")
    if more:
        out.write(f"(only the first {max_rows:,} rows are shown; --format csv or json prints every row, or use LIMIT "
                  "/ --max-rows)\n")
    out.write("\n")
