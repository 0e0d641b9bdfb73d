"""``xgen train``: pre-train a model on the curriculum of a shards directory, or instruction-tune it on SFT
shards (thin layer over :func:`xgen_train.loop.trainer.train`).

Option names are the flat names of :class:`xgen_train.loop.config.TrainConfig`, so ``--resume`` fills the
options not typed from the config stored in ``OUT/run.json`` without a hand-kept key table.

JAX is imported inside the command, so other ``xgen`` commands start fast.
"""
from __future__ import annotations

import json
import os

import click

from cli.common import format_option, number, quiet_option, report, user_errors
from xgen_data.errors import Interrupted, ProblemFound
from xgen_train.model.config import CONFIGS  # no JAX import


@click.command("train")
@click.option("--shards", "shards_dir", default=None, type=click.Path(exists=True, file_okay=False),
              help="xgen-shards directory (pre-training) or xgen-sft-shards directory (instruction tuning, SPEC §5 "
                   "defaults), told apart by its manifest.json. Required, except with --resume (then the run's).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Output directory: metrics.jsonl, loss.png, checkpoints/, run.json, summary.json.")
@click.option("--config", "config_name", default="tiny", show_default=True,
              type=click.Choice(sorted(CONFIGS) + ["init"]),
              help="Model config (xgen_train.model.config.CONFIGS), or init: the --init model's own config (e.g. an "
                   "imported model of another size).")
@click.option("--steps", default=None, type=click.IntRange(min=1),
              help="Stop after this many updates in total (default: the whole plan). A cap: the learning-rate "
                   "schedule stays the plan's, so a later --resume with more --steps continues it smoothly.")
@click.option("--batch-tokens", default=None, type=click.IntRange(min=1),
              help="Tokens per update, constant across sub-stages (sequences = batch_tokens // seq_len, must "
                   "divide). Default 2048 unless --batch-size is given (SFT: 128 sequences).")
@click.option("--batch-size", default=None, type=click.IntRange(min=1),
              help="Sequences per update, constant across sub-stages (instead of --batch-tokens; SFT default 128).")
@click.option("--lr", default=None, type=number(min=0, min_open=True), show_default="3e-4; SFT 2e-5",
              help="Peak learning rate (SPEC §4: 3e-4; SPEC §5: 2e-5).")
@click.option("--warmup", default=None, type=click.IntRange(min=0), show_default="2000; SFT 0",
              help="Linear warm-up updates (SPEC §4: 2000); must not exceed the schedule length.")
@click.option("--b1", default=0.9, show_default=True, type=number(0, 1, max_open=True),
              help="Adam beta1 (SPEC §4, §5: 0.9).")
@click.option("--b2", default=None, type=number(0, 1, max_open=True), show_default="0.95; SFT 0.99",
              help="Adam beta2 (SPEC §4: 0.95; SPEC §5: 0.99).")
@click.option("--weight-decay", default=None, type=number(min=0), show_default="0.1; SFT 0",
              help="Decoupled weight decay on matrices (SPEC §4: 0.1; SFT uses Adam, SPEC §5).")
@click.option("--final-lr-ratio", default=0.1, show_default=True, type=number(0, 1),
              help="The cosine ends at this fraction of the peak learning rate (SPEC §4, §5: 10%).")
@click.option("--epochs", default=None, type=click.IntRange(min=1), show_default="1; SFT 3",
              help="Passes over the train sequences, each in a fresh order drawn from --seed (SPEC §5: 3).")
@click.option("--total-steps", default=None, type=click.IntRange(min=1),
              help="Cosine schedule length (default: the plan's total updates); the rate ends at 10% of the peak.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0),
              help="Data-order seed (batch = f(seed, step)); also the init seed.")
@click.option("--stage", default=None, help="Train only this stage (default: every stage, in manifest order).")
@click.option("--substage", default=None, help="Train only this sub-stage (with --stage when its name is in "
                                               "several stages).")
@click.option("--budget-fraction", default=1.0, show_default=True, type=number(0, 1, min_open=True),
              help="Train on this fraction of every sub-stage's budget (the whole curriculum at a small scale).")
@click.option("--init", "init", default=None, type=click.Path(exists=True, file_okay=False),
              help="Start from these params (a run or checkpoint folder, or a Hugging Face folder with "
                   "config.json + model.safetensors); the optimizer state starts fresh.")
@click.option("--init-on", default="auto", show_default=True, type=click.Choice(["auto", "host", "device"]),
              help="Where a fresh random init is drawn: host (same values on any mesh or chip; needs a full "
                   "host copy), device (each chip draws its own shards), auto (host up to 2 GiB of params).")
@click.option("--log-every", default=10, show_default=True, type=click.IntRange(min=1),
              help="Fetch metrics from the device and refresh the progress bar every N updates (no host sync in "
                   "between); metrics.jsonl still gets one line per update.")
@click.option("--eval-every", default=0, show_default=True, type=click.IntRange(min=0),
              help="Validation loss every N updates on held-out sequences of the current sub-stage "
                   "(always at each sub-stage end; 0: only there).")
@click.option("--eval-sequences", default=64, show_default=True, type=click.IntRange(min=1),
              help="Held-out sequences per validation evaluation (the first N of the sub-stage's validation split).")
@click.option("--precision", type=click.Choice(["auto", "bf16", "f32"]), default="auto", show_default=True,
              help="Precision policy: bf16 = bfloat16 matmul operands with float32 accumulation (forward and "
                   "backward), f32 = float32 with HIGHEST matmul precision; auto = bf16 on GPU/TPU, f32 on CPU.")
@click.option("--attention", type=click.Choice(["auto", "xla", "chunked", "dot_product"]), default="auto",
              show_default=True, help="Attention kernel: xla (full scores), chunked (online softmax, O(T*block) "
                                      "memory), dot_product (jax.nn.dot_product_attention, cuDNN on GPU); auto = "
                                      "dot_product on GPU, chunked on TPU, xla on CPU.")
@click.option("--attention-block", default=512, show_default=True, type=click.IntRange(min=1),
              help="Block length of --attention chunked (tokens).")
@click.option("--loss-chunk", default=512, show_default=True, type=click.IntRange(min=0),
              help="Positions per chunk of the fused LM head + cross-entropy (no full [B, L, 51200] logits); "
                   "0 = full logits.")
@click.option("--remat/--no-remat", default=False, show_default=True,
              help="Rematerialise every decoder block in the backward pass (less memory, ~1 more forward).")
@click.option("--z-loss", default=0.0, show_default=True, type=number(min=0),
              help="PaLM z-loss weight on mean(logsumexp^2) (PaLM: 1e-4; 0 = off).")
@click.option("--skip-spikes", is_flag=True, help="Do not apply an update flagged as a loss spike (SPEC §4 rule).")
@click.option("--doc-mask", is_flag=True, help="Attention does not cross EOS inside a packed sequence and rotary "
                                               "positions restart per document (off: XGen's plain packing).")
@click.option("--accum-steps", default=1, show_default=True, type=click.IntRange(min=1),
              help="Gradient accumulation: microbatches per update (the batch's sequences must divide).")
@click.option("--checkpoint-every", default=0, show_default=True, type=click.IntRange(min=0),
              help="Also checkpoint every N updates (0: only at the end and on SIGTERM/SIGINT).")
@click.option("--keep-checkpoints", default=3, show_default=True, type=click.IntRange(min=1),
              help="Keep the newest K checkpoints.")
@click.option("--resume", is_flag=True, help="Continue from the latest checkpoint under OUT/checkpoints. Options "
                                             "not typed default to the run's (OUT/run.json); typed ones must equal "
                                             "them (differences are listed and refused), except --steps, cadences "
                                             "and --mesh.")
@click.option("--mesh", default=None, help="Device mesh, e.g. data=2,fsdp=2,tensor=2 (axes data/fsdp/tensor; "
                                           "default: every device on data). docs/training-at-scale.md.")
@click.option("--peak-flops", default=None, type=number(min=0, min_open=True),
              help="Peak FLOP/s of one chip for MFU (default: a table of known TPUs/GPUs; on CPU MFU is n/a).")
@click.option("--verify/--no-verify", default=None, show_default="the shards are checked as first read", help="--verify: check every shard's sha256 and token ids before training; --no-verify: skip the sha256 check each shard otherwise gets when first read.")
@click.option("--max-skipped", default=10, show_default=True, type=click.IntRange(min=1),
              help="Stop the run (exit 1) after this many consecutive skipped updates (non-finite, or spikes with "
                   "--skip-spikes): a run that does not learn must not end as a success.")
@quiet_option
@format_option()
@user_errors
def train(out_dir: str, resume: bool, quiet: bool, fmt: str, **settings) -> None:
    """Pre-train a LLaMA model (SPEC §3) with AdamW + warm-up/cosine (SPEC §4), walking every stage and
    sub-stage of the shards in order (or only --stage/--substage); on SFT shards, instruction-tune it (SPEC §5:
    loss on response tokens only, Adam 0.9/0.99, peak 2e-5, cosine to 10%, 128 sequences, 3 epochs).

    Example: xgen train --shards shards/ --out runs/tiny --config tiny --batch-tokens 1024 --lr 3e-3 --warmup 20

    Example (SFT): xgen train --shards sft_shards/ --init runs/tiny --out runs/tiny-inst --config tiny
    """
    ctx = click.get_current_context()
    if resume:
        typed = {k for k in settings if not _defaulted(ctx, k)}
        settings.update(resume_defaults(out_dir, typed))
    if settings["shards_dir"] is None:
        raise click.UsageError("Missing option '--shards' (only --resume can take it from OUT/run.json)")
    if settings["batch_tokens"] is not None and settings["batch_size"] is not None:
        raise click.UsageError("give --batch-tokens or --batch-size, not both")
    from xgen_train.scale.distributed import maybe_initialize

    maybe_initialize()  # multi-host start when the environment asks for it, before any device use
    from xgen_train.export.hf import init_model_config, load_init
    from xgen_train.loop.config import TrainConfig  # imports JAX (via the numerics options)
    from xgen_train.loop.trainer import train as run_train

    try:
        summary = run_train(None, out_dir, TrainConfig.from_flat(**settings, progress=not quiet),
                            resume=True if resume else None, init_loader=load_init, init_config=init_model_config)
    except FloatingPointError as exc:  # every update non-finite: the run ran and did not learn
        raise ProblemFound(str(exc)) from exc

    s = summary
    report(**s)
    click.echo(f"plan: {s['total_steps']:,} updates over {len(s['phases'])} sub-stage(s), schedule "
               f"{s['schedule_steps']:,} updates")
    for ph in s["phases"]:
        click.echo(f"  {ph['stage']}/{ph['substage']}: seq_len {ph['seq_len']} batch {ph['batch_size']} "
                   f"steps {ph['start_step']}..{ph['end_step']} ({ph['steps']:,}); "
                   f"{ph['skipped_sequences']:,} of {ph['n_sequences']:,} train sequences not used (partial last "
                   "batch, or --budget-fraction)")
    if not s["steps"]:
        click.echo(f"nothing to do: checkpoint already at step {s['final_step']} ({s['checkpoint']})")
        return
    click.echo(f"model {s['config_name']} ({s['n_params']:,} params), steps {s['start_step']}..{s['final_step']}, "
               f"{len(s['switches'])} sub-stage switch(es)")
    click.echo(f"loss {s['first_loss']:.4f} -> {s['last_loss']:.4f} (mean of first/last 10: "
               f"{s['first_loss_mean10']:.4f} -> {s['last_loss_mean10']:.4f})"
               + (f"; validation loss {s['val_loss']:.4f}" if s["val_loss"] is not None else ""))
    click.echo(f"tokens {s['tokens']:,} (seen in total {s['tokens_seen']:,}) in {s['seconds']:.1f}s = "
               f"{s['tokens_per_second']:,.0f} tokens/s (compile {s['compile_seconds']:.1f}s); MFU "
               + (f"{100 * s['mfu']:.1f}%" if s.get("mfu") is not None else "n/a (no peak FLOP/s known for "
                  f"{s.get('device_kind')}; pass --peak-flops)")
               + f" on mesh {s.get('mesh')}; spikes: {len(s['spike_steps'])}")
    click.echo(f"checkpoint {s['checkpoint']}")
    click.echo(f"metrics {s['metrics']}" + (f", plot {s['plot']}" if s["plot"] else ""))
    click.echo(json.dumps({k: s[k] for k in ("first_loss", "last_loss", "steps", "tokens", "seconds", "interrupted")}))
    if s["interrupted"]:  # a clean stop (checkpoint saved) is still not a finished run: exit 130
        raise Interrupted(f"stopped by {s['interrupted']} at step {s['final_step']} (checkpoint {s['checkpoint']}); "
                          "continue with the same command plus --resume")


def _defaulted(ctx: click.Context, name: str) -> bool:
    """True when option ``name`` was not typed (its value is click's default)."""
    src = ctx.get_parameter_source(name)
    return src is None or src == click.core.ParameterSource.DEFAULT


def resume_defaults(out_dir: str, typed: set[str]) -> dict:
    """Settings stored in ``OUT/run.json`` for the options the user did not type (``xgen train --resume``).

    Only options that were not typed are filled; a typed value stays and, when it differs from the run's, the
    trainer refuses the resume listing ``key: old -> new``. ``--batch-size`` and ``--batch-tokens`` count as one
    choice. A missing ``--init`` folder is not filled in (the resumed state does not need it). Returns ``{}``
    when there is no run.json. Raises RunConfigError (DamagedDataError) naming run.json when its config cannot be
    read back.
    """
    from xgen_train.loop.config import TrainConfig, load_run_config

    stored = load_run_config(out_dir)
    if stored is None:
        return {}
    skip = set(typed)
    if typed & {"batch_size", "batch_tokens"}:
        skip |= {"batch_size", "batch_tokens"}
    options = {p.name for p in train.params} & set(TrainConfig.flat_names())  # settings with an option
    out = {k: v for k, v in stored.to_flat().items() if k not in skip and k in options}
    if out.get("init") is not None and not os.path.isdir(out["init"]):
        out.pop("init")
    return out
