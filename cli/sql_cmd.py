"""``xgen sql`` and ``xgen stats``: DuckDB over the corpus views of :mod:`xgen_data.sql`."""
from __future__ import annotations

import click

from cli.common import corpus_option, print_rows, user_errors


@click.command()
@corpus_option
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@click.option("--shards", "shard_dirs", multiple=True, type=click.Path(file_okay=False),
              help="Extra shards directory for the `shards` view (built ones are registered automatically).")
@click.argument("query")
@user_errors
def sql(corpus_dir: str, fmt: str, shard_dirs: tuple[str, ...], query: str) -> None:
    """Run a SQL QUERY over the views documents, shards and license_conflicts."""
    import duckdb

    from xgen_data import sql as xsql

    if not query.strip():
        raise click.BadParameter("empty query; e.g. \"SELECT subset, count(*) FROM documents GROUP BY subset\"")
    con = xsql.connect(corpus_dir, list(shard_dirs))
    try:
        rel = con.execute(query)
    except duckdb.Error as exc:
        raise click.ClickException(f"SQL error: {exc}") from None
    if rel is None or rel.description is None:
        return
    columns = [d[0] for d in rel.description]
    print_rows(columns, rel.fetchall(), fmt)


@click.command()
@corpus_option
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@click.option("--plot", "plot_path", default=None, type=click.Path(dir_okay=False),
              help="Also write a PNG histogram of document lengths per subset.")
@user_errors
def stats(corpus_dir: str, fmt: str, plot_path: str | None) -> None:
    """Print the usual corpus tables: per subset, source, license, language; lengths; drops by reason."""
    from xgen_data import sql as xsql

    if plot_path:
        from xgen_data.plots import length_histogram

        length_histogram(corpus_dir, plot_path)

    con = xsql.connect(corpus_dir)
    for title, query in xsql.STATS_QUERIES:
        rel = con.execute(query)
        columns = [d[0] for d in rel.description]
        rows = rel.fetchall()
        if fmt == "table":
            print_rows(columns, rows, fmt, title=title)
        else:
            click.echo(f"# {title}")
            print_rows(columns, rows, fmt)
    if plot_path and fmt == "table":
        click.echo(f"Length histogram: {plot_path}")
