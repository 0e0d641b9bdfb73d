"""``xgen card SHARDS --out DIR``: the data card (README.md, index.html) and, with ``--ai-act``, the draft
public summary of training content of a shards folder."""
from __future__ import annotations

import json

import click

from cli.common import format_option, out_option, own_json, user_errors
from xgen_data.interop.card import write_card


@click.command("card")
@click.argument("shards", type=click.Path(exists=True, file_okay=False))
@click.option("--corpus", "corpus_dir", default=None, type=click.Path(file_okay=False),
              help="The corpus the shards were built from: sources, drop reasons, licenses, languages, duplicates "
                   "and lengths come from SQL over it (default: none, a card from the shards manifest only).")
@click.option("--ai-act", "ai_act", is_flag=True,
              help="Also write ai_act_summary.md: a draft of the EU AI Act Art. 53(1)(d) public summary of "
                   "training content, in the AI Office template's sections, for the provider to complete.")
@out_option(help="Folder to write (new, empty, or an earlier card, which is replaced; written whole or not at all).")
@format_option()
@user_errors
@own_json
def card(shards: str, corpus_dir: str | None, ai_act: bool, out_dir: str, fmt: str) -> None:
    """Write the data card of the shards folder SHARDS into OUT: README.md (a Hugging Face dataset card),
    index.html (one self-contained page with figures), card.json (every fact with its query) and recipe.toml.

    Every number names the query it came from; re-run one with
    xgen sql --corpus CORPUS --recipe OUT/recipe.toml --shards SHARDS "<query>".

    Example: xgen card shards/demo --corpus corpus --ai-act --out cards/demo
    """
    result = write_card(shards, out_dir, corpus_dir=corpus_dir, ai_act_summary=ai_act)
    if fmt == "json":
        click.echo(json.dumps({"out": out_dir, "files": result["files"]}, indent=1))
        return
    click.echo(f"card of {shards} in {out_dir}: " + ", ".join(sorted(result["files"])) + " and card.json")
    if corpus_dir is None:
        click.echo("made without --corpus: sources, drop reasons, licenses, languages and duplicates are not in it")
