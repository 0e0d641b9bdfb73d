"""Helpers shared by the command modules: the one error handler (exit codes of :mod:`xgen_data.errors`),
the shared options of docs/cli.md, and table printing."""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import sys

import click

from xgen_data import errors
from xgen_data.stats.sql_results import table_lines


class CliError(click.ClickException):
    """A one-line ``Error: ...`` on stderr with a chosen exit code (the codes of :mod:`xgen_data.errors`)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _bug_report(exc: BaseException) -> str:
    """Write the traceback of an unexpected exception to a file; return the file's path."""
    import tempfile
    import time
    import traceback

    folder = os.environ.get("XGEN_CRASH_DIR") or tempfile.gettempdir()
    path = os.path.join(folder, f"xgen-bug-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"xgen {' '.join(sys.argv[1:])}\n\n")
        traceback.print_exception(exc, file=f)
    return path


def to_cli_error(exc: BaseException) -> CliError | None:
    """The one-line CLI error for ``exc`` (None: let click handle it: its own exceptions, exits, pipes)."""
    if isinstance(exc, (click.ClickException, click.exceptions.Exit, click.Abort, BrokenPipeError)):
        return None
    if isinstance(exc, KeyboardInterrupt):
        return CliError("interrupted", errors.EXIT_INTERRUPTED)
    if isinstance(exc, errors.XgenError) and exc.exit_code != errors.EXIT_BUG:
        return CliError(str(exc), exc.exit_code)
    if isinstance(exc, OSError):  # the environment: a full disk, a permission, a missing file
        return CliError(str(exc), errors.EXIT_PROBLEM)
    if isinstance(exc, Exception):
        where = _bug_report(exc)
        return CliError(f"internal error (a bug in xgen): {type(exc).__name__}: {exc}; traceback written to {where}",
                        errors.EXIT_BUG)
    return None


class XgenGroup(click.Group):
    """The root group: every command's exceptions go through :func:`to_cli_error` (one handler, one
    exit-code table, docs/cli.md)."""

    def invoke(self, ctx: click.Context):
        try:
            result = super().invoke(ctx)
            sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
            return result
        except BaseException as exc:  # noqa: BLE001 -- mapped or re-raised unchanged
            err = to_cli_error(exc)
            if err is None:
                raise
            raise err from exc


def user_errors(fn):
    """Flush stdout inside the command so a closed pipe (``| head``) is seen there; errors are mapped to exit
    codes as :class:`XgenGroup` maps them (here too, so a command invoked on its own behaves the same).

    A command with ``--format json`` (keyword ``fmt``) that does not write its own JSON prints exactly one JSON
    document: ``{"tables": [{"title", "columns", "rows": [{column: value}]}], "messages": [lines],
    **values given to report()}``; the tables are those :func:`print_rows` got, the messages the lines the
    command echoed to stdout.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            if kwargs.get("fmt") != "json" or getattr(fn, "own_json", False):
                result = fn(*args, **kwargs)
            else:
                result = _as_one_json_document(fn, args, kwargs)
            sys.stdout.flush()
            return result
        except BaseException as exc:  # noqa: BLE001 -- mapped here too, so a command invoked on its own
            err = to_cli_error(exc)     # (tests, other groups) exits with the same codes as under XgenGroup
            if err is None:
                raise
            raise err from exc

    return wrapper


def own_json(fn):
    """Mark a command that prints its own JSON document for ``--format json`` (put under ``@user_errors``)."""
    fn.own_json = True
    return fn


class _Results:
    """What one ``--format json`` command printed: tables, message lines and reported values."""

    def __init__(self) -> None:
        self.tables: list[dict] = []
        self.values: dict = {}


_COLLECTING: list[_Results] = []


def report(**values) -> None:
    """Structured results of the running command: top-level keys of its ``--format json`` document (no-op
    for the table format)."""
    if _COLLECTING:
        _COLLECTING[-1].values.update(values)


def _as_one_json_document(fn, args, kwargs):
    import contextlib
    import io

    res = _Results()
    text = io.StringIO()
    _COLLECTING.append(res)
    error = None
    try:
        with contextlib.redirect_stdout(text):
            return fn(*args, **kwargs)
    except errors.XgenError as exc:  # the results so far still print (e.g. verify's damage), then the error
        error = str(exc)
        raise
    finally:
        _COLLECTING.pop()
        messages = [click.unstyle(line) for line in text.getvalue().splitlines() if line.strip()]
        doc = {**res.values, "tables": res.tables, "messages": messages} | ({"error": error} if error else {})
        click.echo(json.dumps(doc, default=_json_default, ensure_ascii=False, indent=1))


def _json_default(v):
    if hasattr(v, "item"):  # NumPy scalars
        return v.item()
    return str(v)
class FiniteFloat(click.FloatRange):
    """A float option that must be finite (``nan``, ``inf`` are refused: NaN passes every range comparison)
    and inside the range given, as :class:`click.FloatRange`."""

    name = "finite float"

    def convert(self, value, param, ctx):
        rv = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return super().convert(rv, param, ctx)

    def _describe_range(self) -> str:
        # unbounded: nothing to show (click's own text would read "x<=None")
        return "" if self.min is None and self.max is None else super()._describe_range()


def number(min: float | None = None, max: float | None = None, min_open: bool = False,
           max_open: bool = False) -> FiniteFloat:
    """The type of every float option: finite, within ``[min, max]`` (``min_open`` / ``max_open``: exclusive)."""
    return FiniteFloat(min=min, max=max, min_open=min_open, max_open=max_open)


def format_option(choices: tuple[str, ...] = ("table", "json")):
    """``--format``: how a command prints its results (``json`` is one JSON document on stdout)."""
    return click.option("--format", "fmt", type=click.Choice(list(choices)), default=choices[0], show_default=True,
                        help="Output format" + (" (json: one document)" if "json" in choices else "") + ".")


def quiet_option(fn):
    """``--quiet``: no progress on stderr (progress is on by default when stderr is a terminal)."""
    return click.option("--quiet", is_flag=True, help="No progress output on stderr.")(fn)


def show_progress(quiet: bool) -> bool:
    """Progress goes to stderr, on by default when stderr is a terminal, off with ``--quiet``."""
    return not quiet and sys.stderr.isatty()


def out_option(required: bool = True, help: str = "Output folder to write."):
    """``--out``: the output folder (every command that writes a folder names it this way)."""
    return click.option("--out", "out_dir", required=required, type=click.Path(file_okay=False), help=help)


def _ray_address_needs_ray(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``--ray-address`` with another executor is a usage mistake (exit 2), found before the command runs."""
    if value and ctx.params.get("executor", "local") != "ray":
        raise click.UsageError("--ray-address needs --executor ray", ctx)
    return value


def executor_options(fn):
    """``--executor local|ray`` and ``--ray-address``: where a data step's items run (docs/scale.md)."""
    # --executor is eager, so its value is in ctx.params when --ray-address's callback runs
    fn = click.option("--ray-address", default=None, show_default="start a local Ray of --workers CPUs",
                      callback=_ray_address_needs_ray,
                      help="Ray cluster to run on with --executor ray (auto, host:6379 or ray://host:10001).")(fn)
    return click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                        is_eager=True,
                        help="Run the step's work on local processes or as Ray tasks (pip install 'xgen[ray]'); "
                             "the outputs are the same bytes.")(fn)


def corpus_option(fn):
    return click.option("--corpus", "corpus_dir", required=True, type=click.Path(file_okay=False),
                        help="Corpus directory (made by `xgen ingest`).")(fn)


def print_step_reports(steps) -> None:
    """The contract's :class:`~xgen_data.execute.contract.StepReport` of each data step run, in run order: a
    ``Steps`` table, or under ``--format json`` the document's ``"steps"`` key (a list of
    ``{step, items, documents, bytes, seconds, errors}``; docs/cli.md)."""
    if _COLLECTING:
        report(steps=[dataclasses.asdict(s) for s in steps])
        return
    if steps:
        print_rows(["step", "items", "documents", "bytes", "seconds", "errors"],
                   [(s.step, s.items, s.documents, s.bytes, f"{s.seconds:.2f}", len(s.errors)) for s in steps],
                   title="Steps: items, documents and bytes read, seconds")


def print_rows(columns: list[str], rows: list[tuple], fmt: str = "table", title: str | None = None) -> None:
    """Print rows as an aligned text table, CSV or JSON (a list of objects); inside a ``--format json`` command
    the rows become one table of its JSON document."""
    if _COLLECTING:
        _COLLECTING[-1].tables.append({"title": title, "columns": list(columns),
                                       "rows": [dict(zip(columns, r)) for r in rows]})
        return
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
    numeric = [bool(rows) and all(isinstance(r[i], (int, float)) or r[i] is None for r in rows)
               for i in range(len(columns))]
    for text in table_lines(list(columns), [[_fmt(v) for v in r] for r in rows], numeric):
        click.echo(text)
    click.echo("")


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:,.4f}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


def sampling_options(fn):
    """``--temperature``, ``--top-p``, ``--seed``: how a command that generates text samples
    (:func:`xgen_train.evaluate.generate.generate`); greedy by default."""
    for opt in reversed([
        click.option("--temperature", default=0.0, show_default=True, type=number(min=0),
                     help="0 = greedy decoding; > 0 samples from softmax(logits / T)."),
        click.option("--top-p", default=1.0, show_default=True, type=number(min=0, max=1, min_open=True),
                     help="Nucleus sampling mass (with --temperature > 0)."),
        click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="Sampling seed."),
    ]):
        fn = opt(fn)
    return fn

