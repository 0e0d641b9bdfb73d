"""``xgen verify``: SHA-256 of corpus parts, attribute files and registered shard folders (their manifests' own
``manifest_sha256``, shards and indexes; :mod:`xgen_data.stats.verify`)."""
from __future__ import annotations

import click

from cli.common import corpus_option, format_option, print_rows, report, user_errors
from xgen_data.errors import DamagedDataError, ProblemFound


@click.command()
@corpus_option
@click.option("--all", "show_all", is_flag=True, help="List every file, not only problems.")
@format_option()
@user_errors
def verify(corpus_dir: str, show_all: bool, fmt: str) -> None:
    """Check every registered file against its recorded SHA-256; exit status 1 when something is damaged."""
    from xgen_data.stats.verify import DAMAGE, verify_corpus

    try:
        checks = verify_corpus(corpus_dir, progress=True)
    except DamagedDataError as exc:  # damage that stops the check itself (the registry) is still damage found
        raise ProblemFound(str(exc)) from exc
    shown = [c for c in checks if show_all or c.status not in ("ok",)]
    if shown:
        print_rows(["kind", "status", "path", "detail"], [(c.kind, c.status, c.path, c.detail) for c in shown],
                   title="Files checked" if show_all else "Files needing attention")
    counts: dict[str, int] = {}
    for c in checks:
        counts[c.status] = counts.get(c.status, 0) + 1
    summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    if all(c.kind == "registry" for c in checks):
        summary += "; nothing registered yet: no parts, attributes or shards"
    damaged = sum(1 for c in checks if c.status in DAMAGE)
    report(corpus=corpus_dir, checks=len(checks), statuses=counts, damaged=damaged)
    click.echo(f"verify {corpus_dir}: {len(checks)} checks ({summary})")
    if damaged:
        raise ProblemFound(f"{damaged} damaged or missing file(s); re-ingest damaged parts "
                           "(`xgen ingest` repairs them), recompute attributes, rebuild shards")
