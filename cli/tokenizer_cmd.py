"""``xgen tokenizer encode|decode``: the XGen tokenizer from the command line (SPEC §1)."""
from __future__ import annotations

import json
import sys

import click

from cli.common import user_errors


@click.group()
def tokenizer() -> None:
    """Encode text to XGen token ids, or decode ids to text."""


@tokenizer.command()
@click.option("--hf-compat", is_flag=True, help="HF-compatible mode: special-token strings become special ids.")
@click.argument("text", required=False)
@user_errors
def encode(hf_compat: bool, text: str | None) -> None:
    """Print the ids of TEXT (or of standard input when TEXT is '-' or absent) as a JSON list."""
    from xgen_data import tokenizer as tok

    if text is None or text == "-":
        text = sys.stdin.read()
    click.echo(json.dumps(tok.encode(text, hf_compat=hf_compat)))


@tokenizer.command()
@click.argument("ids", required=False)
@user_errors
def decode(ids: str | None) -> None:
    """Print the text of IDS, a JSON list of ints (or standard input when absent)."""
    from xgen_data import tokenizer as tok

    raw = sys.stdin.read() if ids is None or ids == "-" else ids
    try:
        values = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not a JSON list of ints: {exc}") from None
    if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise click.BadParameter("expected a JSON list of ints, e.g. [15496, 995]")
    click.echo(tok.decode(values), nl=False)
    if sys.stdout.isatty():
        click.echo("")
