"""``xgen export hf RUN --out DIR``: a run's latest checkpoint as a Hugging Face ``LlamaForCausalLM`` folder;
``xgen export shards SHARDS --to megatron|mds|litdata|hf --out DIR``: shards for other trainers."""
from __future__ import annotations

import json

import click

from cli.common import format_option, out_option, own_json, print_rows, report, user_errors
from xgen_data.interop import card, megatron
from xgen_data.interop import export as interop
from xgen_data.store.corpus import Corpus


@click.group("export")
def export() -> None:
    """Export a trained model, or a shards folder, to other formats."""


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


@export.command("shards")
@click.argument("shards", type=click.Path(exists=True, file_okay=False))
@click.option("--to", "target", required=True, type=click.Choice(list(interop.TARGETS)),
              help="Target format: megatron (.bin/.idx + --data-path blend), mds (MosaicML streaming), litdata "
                   "(TokensLoader chunks), hf (Hugging Face datasets Parquet + dataset card).")
@click.option("--unit", type=click.Choice(list(megatron.UNITS)), default="sequence", show_default=True,
              help="megatron: one .idx sequence per packed row, or per document piece (cut after each EOS).")
@click.option("--corpus", "corpus_dir", default=None, type=click.Path(file_okay=False),
              help="hf: the corpus the shards were built from, for the full dataset card in README.md "
                   "(default: a card from the shards manifest only); checked for every target, read by hf only.")
@out_option(help="Folder to write (new, empty, or an earlier export, replaced whole; written whole or not at all).")
@format_option()
@user_errors
@own_json
def export_shards_cmd(shards: str, target: str, unit: str, corpus_dir: str | None, out_dir: str, fmt: str) -> None:
    """Export the shards folder SHARDS for another trainer: one dataset per stage, sub-stage and split.

    Every shard is checked against its manifest first. OUT gets the datasets, xgen_shards_export.json (every file's
    sha256, and per stage the blend of its sub-stages in the target's units) and, for megatron,
    <stage>.data-path.txt (the --data-path value); for hf a README.md dataset card.

    Example: xgen export shards shards/demo --to megatron --out exports/demo-megatron
    """
    if corpus_dir is not None:  # a mistyped --corpus is an error for every target, not silently ignored
        Corpus(corpus_dir)
        if target != "hf":
            click.echo(f"note: --corpus is used by --to hf only (its dataset card); the {target} export does not "
                       "read it", err=True)
    readme = (lambda manifest, sets: card.hf_readme(shards, manifest, sets, corpus_dir)) if target == "hf" else None
    result = interop.export_shards(shards, out_dir, target, unit=unit, readme=readme,
                                   reads=[corpus_dir] if corpus_dir is not None else [])
    if fmt == "json":
        click.echo(json.dumps(result, indent=1, ensure_ascii=False))
        return
    rows = [(d["stage"], d["substage"], d["split"], d["seq_len"], d["samples"], d["tokens"], d["path"])
            for d in result["datasets"]]
    print_rows(["stage", "substage", "split", "seq_len", "samples", "tokens", "path"], rows,
               title=f"{target} export in {out_dir}")
    for b in result["blends"]:
        shares = interop.blend_token_shares(result, b["stage"])
        click.echo(f"{b['stage']} blend ({b['unit']}, epoch {b['epoch_size']:,} {b['unit']}): "
                   + ", ".join(f"{w['path']} {w['weight']:.6f}" for w in b["weights"])
                   + "; token shares " + ", ".join(f"{k} {v:.4%}" for k, v in shares.items()))
