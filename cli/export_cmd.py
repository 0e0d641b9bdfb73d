"""``xgen export hf RUN --out DIR``: a run's latest checkpoint as a Hugging Face ``LlamaForCausalLM`` folder."""
from __future__ import annotations

import click

from cli.common import format_option, report, user_errors


@click.group("export")
def export() -> None:
    """Export a trained model to other formats."""


@export.command("hf")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="Hugging Face folder to write (an earlier xgen export there is replaced).")
@click.option("--no-tokenizer", is_flag=True, help="Skip the tokenizer files (they need the GPT-2 ranks).")
@format_option()
@user_errors
def export_hf_cmd(run: str, out: str, no_tokenizer: bool, fmt: str) -> None:
    """Write --out as a Hugging Face folder from RUN (a run folder or one checkpoint folder).

    OUT gets config.json, model.safetensors, generation_config.json, tokenizer.json, tokenizer_config.json,
    special_tokens_map.json and xgen_export.json; load it with
    AutoModelForCausalLM.from_pretrained(OUT) and AutoTokenizer.from_pretrained(OUT). OUT is written under a
    temporary name and renamed; an existing OUT is replaced only if it is an earlier xgen export.

    Example: xgen export hf runs/tiny --out exports/tiny-hf
    """
    import json

    from xgen_train.export.hf import EXPORT_MARKER, export_hf

    path = export_hf(run, out, tokenizer=not no_tokenizer)
    info = json.loads((path / EXPORT_MARKER).read_text(encoding="utf-8"))
    cfg = info["model_config"]
    size = sum(f.stat().st_size for f in path.iterdir())
    report(out=str(path), step=info["step"], source_checkpoint=info["source_checkpoint"], model_config=cfg,
           sha256=info["sha256"], bytes=size)
    click.echo(f"exported step {info['step']} of {info['source_checkpoint']}")
    click.echo(f"model: hidden {cfg['hidden']}, {cfg['n_layers']} layers, {cfg['n_heads']} heads, vocab "
               f"{cfg['vocab_size']:,}, max positions {cfg['max_positions']:,}")
    click.echo(f"{path}: {', '.join(sorted(info['sha256']))} ({size / 1e6:,.1f} MB)")
