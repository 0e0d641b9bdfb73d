"""``xgen import hf DIR --out RUN``: start a run folder from a Hugging Face ``LlamaForCausalLM`` folder."""
from __future__ import annotations

import click

from cli.common import format_option, report, user_errors


@click.group("import")
def import_() -> None:
    """Import a model from other formats."""


@import_.command("hf")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "run", required=True, type=click.Path(file_okay=False),
              help="Run folder to create; gets checkpoints/step_00000000.")
@format_option()
@user_errors
def import_hf_cmd(folder: str, run: str, fmt: str) -> None:
    """Read FOLDER (config.json + model.safetensors), check every key, shape and config value, and write
    a run folder whose step-0 checkpoint holds its parameters (fresh optimizer state).

    Example: xgen import hf exports/tiny-hf --out runs/from-hf
    """
    from xgen_train.export.hf import import_hf
    from xgen_train.loop.checkpoint import read_meta
    from xgen_train.model.config import ModelConfig, count_parameters

    ckpt = import_hf(folder, run)
    meta = read_meta(ckpt)["run"]
    name = meta.get("config_name")
    n = count_parameters(ModelConfig.from_dict(meta["model_config"]))
    report(folder=folder, run=run, checkpoint=str(ckpt), parameters=n, config_name=name)
    click.echo(f"imported {folder}: {n:,} parameters"
               + (f" (config {name!r})" if name else " (a config not in xgen's named configs)"))
    click.echo(f"checkpoint {ckpt}")
    click.echo(f"train from it: xgen train --shards SHARDS --out NEW_RUN --init {run} --config {name or 'init'}")
