"""``xgen ingest``: raw files into a tokenized Parquet corpus (thin layer over :mod:`xgen_data.sources.ingest`)."""
from __future__ import annotations

import os

import click

from cli.common import (
    corpus_option,
    executor_options,
    format_option,
    print_rows,
    quiet_option,
    show_progress,
    user_errors,
)


def expand_inputs(paths: tuple[str, ...]) -> list[str]:
    """Files as given, and the supported files directly inside any folder given (sorted, not recursive:
    :func:`xgen_data.sources.ingest.find_inputs` with ``recursive=False``).

    Used by ``xgen demo --corpus DIR`` (the top level of a corpora folder); ``xgen ingest`` reads folders
    recursively.
    """
    from xgen_data.sources.ingest import find_inputs

    return [f.path for f in find_inputs(paths, recursive=False)[0]]


def _check_inputs(inputs: tuple[str, ...]) -> tuple[str, ...]:
    """Local paths must exist (URIs are checked when listed: their storage may need credentials first)."""
    from xgen_data.sources.locations import is_uri

    for p in inputs:
        if not is_uri(p) and not os.path.exists(p):
            raise click.BadParameter(f"Path {p!r} does not exist.", param_hint="'INPUTS...'")
    return inputs


def id_from_option(fn):
    """``--id-from line|sha256``: how a record without an ``id`` gets one (default: it is a bad record)."""
    return click.option("--id-from", type=click.Choice(["line", "sha256"]), default=None,
                        show_default="none: a record without an id is an error naming file and line",
                        help="Make the id of a record without one: line (<file stem>#<file sha256[:12]>:<line>) or "
                             "sha256 (sha256:<hex of the text>; a repeated text is then a duplicate id).")(fn)


@click.command()
@corpus_option
@click.argument("inputs", nargs=-1, required=True, callback=lambda _ctx, _param, value: _check_inputs(value))
@click.option("--subset", default=None, help="Subset for all inputs (default: from the file name; nl -> natural).")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 256), help="Tokenizer processes.")
@click.option("--on-error", type=click.Choice(["raise", "skip"]), default="raise", show_default=True,
              help="raise: stop at the first bad record, duplicate id, truncated .gz/.zst stream or input holding no "
                   "record; skip: count and report them (a truncated file keeps the records before the break).")
@click.option("--columns", "columns_spec", default=None,
              help="Map another schema's columns to fields: text=content,path=max_stars_repo_path (StarCoderData / "
                   "The Stack Parquet files are recognised without it).")
@click.option("--metadata-tokens", is_flag=True,
              help="Prefix code documents with StarCoder's <reponame> <filename> <gh_stars> tokens (by id; off by default).")
@id_from_option
@executor_options
@format_option()
@quiet_option
@user_errors
def ingest(corpus_dir: str, inputs: tuple[str, ...], subset: str | None, workers: int, on_error: str, quiet: bool,
           columns_spec: str | None, metadata_tokens: bool, id_from: str | None, executor: str,
           ray_address: str | None, fmt: str) -> None:
    """Read JSONL / JSONL.gz / JSONL.zst / Parquet INPUTS (files or folders) into the corpus, tokenized.

    INPUTS are paths or fsspec URIs (s3://bucket/prefix/, gs://, hf://, file://; s3:// needs
    pip install 'xgen[remote]' and the AWS_* variables, AWS_ENDPOINT_URL for a non-AWS server).
    Folders are read recursively; hidden entries and files of other types are skipped and listed.
    """
    from xgen_data.sources.ingest import find_inputs, summarize_skipped
    from xgen_data.sources.ingest import ingest as run
    from xgen_data.sources.readers import parse_columns

    columns = parse_columns(columns_spec)

    files, skipped = find_inputs(inputs, corpus_dir)
    for line in summarize_skipped(skipped):
        click.echo(f"skipped {line}")
    reports = run(corpus_dir, [(f.path, subset, f.folder) for f in files], workers=workers, on_error=on_error,
                  progress=show_progress(quiet), columns=columns, metadata_tokens=metadata_tokens,
                  executor=executor, ray_address=ray_address, id_from=id_from)
    print_ingest(reports)


def print_ingest(reports) -> None:
    rows = [(r.name or os.path.basename(r.path), r.subset, r.status, r.n_read, r.n_written, r.n_tokens,
             sum(r.skipped.values()), ", ".join(f"{k}={v}" for k, v in sorted(r.skipped.items())), f"{r.seconds:.1f}")
            for r in reports]
    print_rows(["input", "subset", "status", "read", "written", "tokens", "skipped", "skipped_by_reason", "seconds"],
               rows, title="Ingest")
    for r in reports:
        for ex in r.examples:
            click.echo(f"  skipped: {ex}")
