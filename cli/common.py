"""Helpers shared by the command modules: clean error messages and table printing."""
from __future__ import annotations

import functools
import json
import sys

import click

#: Errors that are the user's input, printed as one line (``Error: file:line: problem``), exit status 1.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, KeyError, OSError)  # OSError: e.g. disk full


def user_errors(fn):
    """Turn the library's input errors into a ``click.ClickException`` (no traceback).

    A closed standard output (``xgen sql ... | head -1``) is left to click, which exits quietly.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            result = fn(*args, **kwargs)
            sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
            return result
        except click.ClickException:
            raise
        except BrokenPipeError:
            raise  # the reader left (`| head`): click's main exits quietly with status 1
        except USER_ERRORS as exc:
            msg = str(exc) if not isinstance(exc, KeyError) else str(exc.args[0] if exc.args else exc)
            raise click.ClickException(msg) from exc

    return wrapper


def corpus_option(fn):
    return click.option("--corpus", "corpus_dir", required=True, type=click.Path(file_okay=False),
                        help="Corpus directory (made by `xgen ingest`).")(fn)


def print_rows(columns: list[str], rows: list[tuple], fmt: str = "table", title: str | None = None) -> None:
    """Print rows as an aligned text table, CSV or JSON (a list of objects)."""
    if fmt == "json":
        click.echo(json.dumps([dict(zip(columns, r)) for r in rows], default=str, ensure_ascii=False, indent=1))
        return
    if fmt == "csv":
        import csv
        import sys

        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(columns)
        w.writerows(rows)
        return
    if title:
        click.echo(click.style(title, bold=True))
    cells = [[_fmt(v) for v in r] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    numeric = [all(isinstance(r[i], (int, float)) or r[i] is None for r in rows) and rows for i in range(len(columns))]
    line = lambda vals: "  ".join(v.rjust(w) if n else v.ljust(w) for v, w, n in zip(vals, widths, numeric))  # noqa: E731
    click.echo(line(columns))
    click.echo("  ".join("-" * w for w in widths))
    for r in cells:
        click.echo(line(r))
    click.echo("")


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:,.4f}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)
