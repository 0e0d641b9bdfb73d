"""``xgen sql`` and ``xgen stats``: read-only DuckDB over the corpus views of :mod:`xgen_data.stats.sql`."""
from __future__ import annotations

import sys

import click

from cli.common import corpus_option, format_option, number, own_json, user_errors
from xgen_data import errors

recipe_option = click.option("--recipe", "recipe_name", default=None,
                             help="Show this recipe's decisions (kept, drop_reason) [the corpus defaults of the last "
                                  "`xgen filter` / `xgen dedup`].")


def _connect(corpus_dir: str, recipe_name: str | None, shard_dirs: list[str] | None = None):
    """The corpus views with ``recipe_name``'s decisions (named on stderr), locked down
    (:func:`xgen_data.stats.sql.lock_down`)."""
    from xgen_data import query
    from xgen_data.mixing import decisions, recipe
    from xgen_data.stats import sql as xsql
    from xgen_data.store.corpus import Corpus

    r = recipe.load(recipe_name) if recipe_name else None
    dec = decisions.for_corpus(Corpus(corpus_dir), r)
    click.echo(query.describe(dec), err=True)
    con = xsql.connect(corpus_dir, shard_dirs, dec=dec)
    xsql.lock_down(con, corpus_dir)
    return con


def _guard(con, timeout: float | None = None):
    """Ctrl-C / SIGTERM, ``timeout`` and the spill cap stop the query (:func:`xgen_data.store.query_guard.guard`)."""
    from xgen_data.store import duckdb_settings, query_guard

    folder = duckdb_settings.spill_dir()
    return query_guard.guard(con, spill_folder=folder, spill_cap=duckdb_settings.spill_cap(folder), timeout=timeout)


def _sql_error(exc: Exception, corpus_dir: str) -> errors.XgenError:
    """A DuckDB error as one line: a query that reads other files is refused (exit 2), a damaged corpus part
    is damaged data with the way to repair it, anything else is a bad query (exit 3)."""
    import os

    msg = f"SQL error: {exc}"
    if "Permission Error" in str(exc):  # the query named a file: DuckDB's lock-down, not damage
        return errors.RefusedError(msg + " (xgen sql reads the views' files only; query the views documents, "
                                   "shards, license_conflicts)")
    if os.path.join(os.path.abspath(corpus_dir), "docs") in str(exc):
        return errors.DamagedDataError(msg + f" (a damaged corpus part: `xgen verify --corpus {corpus_dir}` lists "
                                       "damage; `xgen ingest` of the input file it came from writes it again)")
    return errors.InputError(msg)


@click.command()
@corpus_option
@format_option(("table", "csv", "json"))
@click.option("--shards", "shard_dirs", multiple=True, type=click.Path(file_okay=False),
              help="Extra shards directory for the `shards` view, repeatable (default: none; built ones are "
                   "registered automatically).")
@recipe_option
@click.option("--timeout", "timeout", default=None, type=number(min=0, min_open=True),
              help="Stop the query after this many seconds (exit 1) [default: no limit; Ctrl-C stops it, exit 130].")
@click.option("--max-rows", default=10_000, show_default=True, type=click.IntRange(min=1),
              help="Rows a --format table prints (a notice says when there are more; csv and json stream every row).")
@click.argument("query")
@user_errors
@own_json
def sql(corpus_dir: str, fmt: str, shard_dirs: tuple[str, ...], recipe_name: str | None, timeout: float | None,
        max_rows: int, query: str) -> None:
    """Run one read-only SQL QUERY over the views documents, shards and license_conflicts.

    Only queries run (SELECT, WITH, FROM, VALUES, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN); statements that
    write or change settings (COPY, ATTACH, CREATE, SET, PRAGMA, ...) are refused. Ctrl-C (or SIGTERM) stops
    a running query (exit 130); so do --timeout and the spill cap XGEN_DUCKDB_SPILL (exit 1).
    """
    import duckdb

    from xgen_data.stats import sql as xsql
    from xgen_data.stats import sql_results

    if not query.strip():
        raise click.BadParameter("empty query; e.g. \"SELECT subset, count(*) FROM documents GROUP BY subset\"")
    try:
        statements = xsql.check_read_only(query)
    except duckdb.Error as exc:
        raise errors.InputError(f"SQL error: {exc}") from None
    if not statements:
        raise click.BadParameter("no statement in the query (only comments or semicolons)")
    if len(statements) > 1:
        raise click.BadParameter(f"run one statement per call (got {len(statements)})")
    con = _connect(corpus_dir, recipe_name, list(shard_dirs))
    try:
        with _guard(con, timeout):
            result = sql_results.query(con, statements[0].query, fmt, explain=statements[0].type.name == "EXPLAIN")
            sql_results.write(result, fmt, sys.stdout, max_rows=max_rows)
    except duckdb.Error as exc:
        raise _sql_error(exc, corpus_dir) from None


@click.command()
@corpus_option
@format_option()
@click.option("--plot", "plot_path", default=None, type=click.Path(dir_okay=False),
              help="Also write a PNG histogram of document lengths per subset.")
@click.option("--language-plot", "lang_plot_path", default=None, type=click.Path(dir_okay=False),
              help="Also write a PNG of code tokens per language before and after each license policy.")
@recipe_option
@user_errors
@own_json
def stats(corpus_dir: str, fmt: str, plot_path: str | None, recipe_name: str | None,
          lang_plot_path: str | None = None) -> None:
    """Print the usual corpus tables: per subset, source, license, language; lengths; drops by reason.

    ``--format json`` prints one JSON document: ``{"corpus": ..., "tables": [{"title", "rows": [...]}]}``.
    """
    import duckdb

    try:
        con = _connect(corpus_dir, recipe_name)
        with _guard(con):
            _stats_outputs(con, corpus_dir, fmt, plot_path, recipe_name, lang_plot_path)
    except duckdb.Error as exc:  # e.g. a damaged part: DuckDB's message names the file
        raise _sql_error(exc, corpus_dir) from None
    if plot_path and fmt == "table":
        click.echo(f"Length histogram: {plot_path}")
    if lang_plot_path and fmt == "table":
        click.echo(f"Tokens per language and policy: {lang_plot_path}")


def _stats_outputs(con, corpus_dir: str, fmt: str, plot_path: str | None, recipe_name: str | None,
                   lang_plot_path: str | None) -> None:
    """The plots asked for, then the tables."""
    if plot_path:
        from xgen_data.mixing import recipe
        from xgen_data.stats.plots import length_histogram

        r = recipe.load(recipe_name) if recipe_name else None
        length_histogram(corpus_dir, plot_path, r.min_tokens if r else 100, recipe=r)
    if lang_plot_path:
        from xgen_data.mixing import recipe as recipe_mod
        from xgen_data.stats.plots import language_policy_plot

        language_policy_plot(corpus_dir, lang_plot_path, recipe_mod.load(recipe_name) if recipe_name else None)
    _print_stats(con, corpus_dir, fmt)


def _print_stats(con, corpus_dir: str, fmt: str) -> None:
    import json
    import os

    from xgen_data.stats import sql as xsql
    from xgen_data.stats import sql_results

    out = sys.stdout
    if fmt == "json":
        out.write("{" + f'"corpus": {json.dumps(os.path.abspath(corpus_dir), ensure_ascii=False)}, "tables": [')
    for i, (title, query) in enumerate(xsql.STATS_QUERIES):
        result = sql_results.query(con, query, fmt)
        if fmt == "json":
            out.write(("\n" if i == 0 else ",\n") + f' {{"title": {json.dumps(title)}, "rows": ')
            sql_results.write_json_rows(result, out, indent=" ")
            out.write("}")
        else:
            sql_results.write(result, fmt, out, title=title)
    if fmt == "json":
        out.write("\n]}\n")
