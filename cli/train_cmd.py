"""``xgen train``: pre-train a model on a shards directory (thin layer over :func:`xgen_train.trainer.train`).

JAX is imported inside the command, so other ``xgen`` commands start fast.
"""
from __future__ import annotations

import json

import click

from xgen_train.config import CONFIGS  # no JAX import


@click.command("train")
@click.option("--shards", "shards_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="xgen-shards directory (holds manifest.json).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Output directory: metrics.jsonl, loss.png, checkpoints/, summary.json.")
@click.option("--config", "config_name", default="tiny", show_default=True, type=click.Choice(sorted(CONFIGS)),
              help="Model config (xgen_train.config.CONFIGS).")
@click.option("--steps", default=200, show_default=True, type=click.IntRange(min=1),
              help="Total optimizer updates (including those of a resumed checkpoint).")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1), help="Sequences per update.")
@click.option("--lr", default=3e-4, show_default=True, type=float, help="Peak learning rate (SPEC §4: 3e-4).")
@click.option("--warmup", default=2000, show_default=True, type=click.IntRange(min=0),
              help="Linear warm-up updates (SPEC §4: 2000); must not exceed the schedule length.")
@click.option("--total-steps", default=None, type=click.IntRange(min=1),
              help="Cosine schedule length (default: --steps); the rate ends at 10% of the peak.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0),
              help="Data-order seed (batch = f(seed, step)); also the init seed.")
@click.option("--stage", default=None, help="Stage to train on (needed when the manifest has several).")
@click.option("--substage", default=None, help="Sub-stage to train on (needed when the stage has several).")
@click.option("--log-every", default=10, show_default=True, type=click.IntRange(min=1),
              help="Progress-bar refresh interval; metrics.jsonl gets every step.")
@click.option("--compute-dtype", type=click.Choice(["float32", "bfloat16"]), default="float32", show_default=True,
              help="Matmul operand dtype (SPEC §3: bfloat16 matmuls, float32 params/accumulation).")
@click.option("--checkpoint-every", default=0, show_default=True, type=click.IntRange(min=0),
              help="Also checkpoint every N updates (0: only at the end).")
@click.option("--resume", is_flag=True, help="Continue from the latest checkpoint under OUT/checkpoints.")
@click.option("--verify/--no-verify", default=None, help="--verify: check every shard's sha256 and token ids before training; --no-verify: skip the sha256 check each shard otherwise gets when first read.")
@click.option("--no-progress", is_flag=True, help="No progress bar; print a line every --log-every steps.")
def train(shards_dir: str, out_dir: str, config_name: str, steps: int, batch_size: int, lr: float, warmup: int,
          total_steps: int | None, seed: int, stage: str | None, substage: str | None, log_every: int,
          compute_dtype: str, checkpoint_every: int, resume: bool, verify: bool, no_progress: bool) -> None:
    """Pre-train a LLaMA model (SPEC §3) with AdamW + warm-up/cosine (SPEC §4) on one sub-stage.

    Example: xgen train --shards shards/ --out runs/tiny --config tiny --steps 200 --batch-size 8
    --lr 3e-3 --warmup 20
    """
    from xgen_train.data import ShardFormatError
    from xgen_train.trainer import train as run_train

    try:
        summary = run_train(shards_dir, out_dir, config_name=config_name, steps=steps, batch_size=batch_size,
                            lr=lr, warmup=warmup, seed=seed, stage=stage, substage=substage, log_every=log_every,
                            total_steps=total_steps, compute_dtype=compute_dtype, checkpoint_every=checkpoint_every,
                            resume=True if resume else None, verify=verify, progress=not no_progress)
    except (ShardFormatError, ValueError, FloatingPointError) as exc:
        raise click.ClickException(str(exc)) from exc

    s = summary
    if not s["steps"]:
        click.echo(f"nothing to do: checkpoint already at step {s['final_step']} ({s['checkpoint']})")
        return
    click.echo(f"model {s['config_name']} ({s['n_params']:,} params) on {s['stage']}/{s['substage']} "
               f"seq_len {s['seq_len']} batch {s['batch_size']}")
    click.echo(f"steps {s['start_step']}..{s['final_step']}: loss {s['first_loss']:.4f} -> {s['last_loss']:.4f} "
               f"(mean of first/last 10: {s['first_loss_mean10']:.4f} -> {s['last_loss_mean10']:.4f})")
    click.echo(f"tokens {s['tokens']:,} in {s['seconds']:.1f}s = {s['tokens_per_second']:,.0f} tokens/s "
               f"(compile {s['compile_seconds']:.1f}s); spikes: {len(s['spike_steps'])}")
    click.echo(f"checkpoint {s['checkpoint']}")
    click.echo(f"metrics {s['metrics']}" + (f", plot {s['plot']}" if s["plot"] else ""))
    click.echo(json.dumps({k: s[k] for k in ("first_loss", "last_loss", "steps", "tokens", "seconds")}))
