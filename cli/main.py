"""Entry point of the ``xgen`` command: registers one click command (or group) per module."""
from __future__ import annotations

import importlib

import click

from cli.common import XgenGroup


@click.group(cls=XgenGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="xgen")
def cli() -> None:
    """xgen: raw corpora to packed, deduplicated token shards and a trained LLaMA model (XGen-7B recipe)."""


# (module, attribute): each module under cli/ defines one click command or group.
_COMMANDS = [
    ("cli.tokenizer_cmd", "tokenizer"),
    ("cli.ingest_cmd", "ingest"),
    ("cli.sql_cmd", "sql"),
    ("cli.sql_cmd", "stats"),
    ("cli.filter_cmd", "filter_"),
    ("cli.dedup_cmd", "dedup"),
    ("cli.verify_cmd", "verify"),
    ("cli.mix_cmd", "mix"),
    ("cli.train_cmd", "train"),
    ("cli.plot_cmd", "plot"),
    ("cli.demo_cmd", "demo"),
    ("cli.export_cmd", "export"),
    ("cli.import_cmd", "import_"),
    ("cli.generate_cmd", "generate"),
    ("cli.eval_cmd", "eval_"),
    ("cli.carbon_cmd", "carbon"),
    ("cli.card_cmd", "card"),
    ("cli.sft_cmd", "sft"),
    ("cli.chat_cmd", "chat"),
]

for _module, _attr in _COMMANDS:
    cli.add_command(getattr(importlib.import_module(_module), _attr))
