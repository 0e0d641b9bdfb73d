"""``xgen sql`` and ``xgen stats``: DuckDB over the corpus views of :mod:`xgen_data.sql`."""
from __future__ import annotations

import click

from cli.common import corpus_option, print_rows, user_errors

recipe_option = click.option("--recipe", "recipe_name", default=None,
                             help="Show this recipe's decisions (kept, drop_reason) [the corpus defaults of the last "
                                  "`xgen filter` / `xgen dedup`].")


def connect_for(corpus_dir: str, recipe_name: str | None, shard_dirs=()):
    """A connection whose ``documents`` view shows ``recipe_name``'s decisions; says which on stderr."""
    from xgen_data import decisions, recipe
    from xgen_data import sql as xsql
    from xgen_data.corpus import Corpus

    r = recipe.load(recipe_name) if recipe_name else None
    dec = decisions.for_corpus(Corpus(corpus_dir), r)
    click.echo(decisions.describe(dec), err=True)
    return xsql.connect(corpus_dir, list(shard_dirs), dec=dec)


@click.command()
@corpus_option
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@click.option("--shards", "shard_dirs", multiple=True, type=click.Path(file_okay=False),
              help="Extra shards directory for the `shards` view (built ones are registered automatically).")
@recipe_option
@click.argument("query")
@user_errors
def sql(corpus_dir: str, fmt: str, shard_dirs: tuple[str, ...], recipe_name: str | None, query: str) -> None:
    """Run a SQL QUERY over the views documents, shards and license_conflicts."""
    import duckdb

    if not query.strip():
        raise click.BadParameter("empty query; e.g. \"SELECT subset, count(*) FROM documents GROUP BY subset\"")
    con = connect_for(corpus_dir, recipe_name, shard_dirs)
    try:
        rel = con.execute(query)
    except duckdb.Error as exc:
        hint = (f"; check the corpus with `xgen verify --corpus {corpus_dir}`" if isinstance(exc, duckdb.IOException)
                or "magic bytes" in str(exc) else "")
        raise click.ClickException(f"SQL error: {exc}{hint}") from None
    if rel is None or rel.description is None:
        return
    columns = [d[0] for d in rel.description]
    print_rows(columns, rel.fetchall(), fmt)


@click.command()
@corpus_option
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@click.option("--plot", "plot_path", default=None, type=click.Path(dir_okay=False),
              help="Also write a PNG histogram of document lengths per subset.")
@recipe_option
@user_errors
def stats(corpus_dir: str, fmt: str, plot_path: str | None, recipe_name: str | None) -> None:
    """Print the usual corpus tables: per subset, source, license, language; lengths; drops by reason."""
    from xgen_data import sql as xsql

    con = connect_for(corpus_dir, recipe_name)
    if plot_path:
        from xgen_data import recipe
        from xgen_data.plots import length_histogram

        r = recipe.load(recipe_name) if recipe_name else None
        length_histogram(corpus_dir, plot_path, r.min_tokens if r else 100, recipe=r)

    import duckdb

    for title, query in xsql.STATS_QUERIES:
        try:
            rel = con.execute(query)
        except duckdb.Error as exc:  # e.g. a truncated part: name it and the way to find and repair damage
            raise click.ClickException(f"{exc}; check the corpus with `xgen verify --corpus {corpus_dir}` and "
                                       "re-ingest damaged parts") from None
        columns = [d[0] for d in rel.description]
        rows = rel.fetchall()
        if fmt == "table":
            print_rows(columns, rows, fmt, title=title)
        else:
            click.echo(f"# {title}")
            print_rows(columns, rows, fmt)
    if plot_path and fmt == "table":
        click.echo(f"Length histogram: {plot_path}")
