"""``xgen train``: pre-train a model on the curriculum of a shards directory (thin layer over
:func:`xgen_train.loop.trainer.train`).

JAX is imported inside the command, so other ``xgen`` commands start fast.
"""
from __future__ import annotations

import json
import os

import click

from cli.common import format_option, quiet_option, report, user_errors
from xgen_data.errors import DamagedDataError, Interrupted, ProblemFound
from xgen_train.model.config import CONFIGS  # no JAX import


@click.command("train")
@click.option("--shards", "shards_dir", default=None, type=click.Path(exists=True, file_okay=False),
              help="xgen-shards directory (holds manifest.json). Required, except with --resume (then the run's).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Output directory: metrics.jsonl, loss.png, checkpoints/, run.json, summary.json.")
@click.option("--config", "config_name", default="tiny", show_default=True, type=click.Choice(sorted(CONFIGS)),
              help="Model config (xgen_train.model.config.CONFIGS).")
@click.option("--steps", default=None, type=click.IntRange(min=1),
              help="Stop after this many updates in total (default: the whole plan). A cap: the learning-rate "
                   "schedule stays the plan's, so a later --resume with more --steps continues it smoothly.")
@click.option("--batch-tokens", default=None, type=click.IntRange(min=1),
              help="Tokens per update, constant across sub-stages (sequences = batch_tokens // seq_len, must "
                   "divide). Default 2048 unless --batch-size is given.")
@click.option("--batch-size", default=None, type=click.IntRange(min=1),
              help="Sequences per update, constant across sub-stages (instead of --batch-tokens).")
@click.option("--lr", default=3e-4, show_default=True, type=float, help="Peak learning rate (SPEC §4: 3e-4).")
@click.option("--warmup", default=2000, show_default=True, type=click.IntRange(min=0),
              help="Linear warm-up updates (SPEC §4: 2000); must not exceed the schedule length.")
@click.option("--total-steps", default=None, type=click.IntRange(min=1),
              help="Cosine schedule length (default: the plan's total updates); the rate ends at 10% of the peak.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0),
              help="Data-order seed (batch = f(seed, step)); also the init seed.")
@click.option("--stage", default=None, help="Train only this stage (default: every stage, in manifest order).")
@click.option("--substage", default=None, help="Train only this sub-stage (with --stage when its name is in "
                                               "several stages).")
@click.option("--budget-fraction", default=1.0, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="Train on this fraction of every sub-stage's budget (the whole curriculum at a small scale).")
@click.option("--init", "init_path", default=None, type=click.Path(exists=True, file_okay=False),
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
@click.option("--z-loss", default=0.0, show_default=True, type=click.FloatRange(min=0),
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
@click.option("--peak-flops", default=None, type=click.FloatRange(min=0, min_open=True),
              help="Peak FLOP/s of one chip for MFU (default: a table of known TPUs/GPUs; on CPU MFU is n/a).")
@click.option("--verify/--no-verify", default=None, help="--verify: check every shard's sha256 and token ids before training; --no-verify: skip the sha256 check each shard otherwise gets when first read.")
@quiet_option
@format_option()
@user_errors
def train(shards_dir: str, out_dir: str, config_name: str, steps: int | None, batch_tokens: int | None,
          batch_size: int | None, lr: float, warmup: int, total_steps: int | None, seed: int, stage: str | None,
          substage: str | None, budget_fraction: float, init_path: str | None, log_every: int, eval_every: int,
          eval_sequences: int, precision: str, attention: str, attention_block: int, loss_chunk: int,
          remat: bool, z_loss: float, skip_spikes: bool, doc_mask: bool, accum_steps: int,
          checkpoint_every: int, keep_checkpoints: int, resume: bool, mesh: str | None,
          peak_flops: float | None, verify: bool | None, quiet: bool, init_on: str, fmt: str) -> None:
    """Pre-train a LLaMA model (SPEC §3) with AdamW + warm-up/cosine (SPEC §4), walking every stage and
    sub-stage of the shards in order (or only --stage/--substage).

    Example: xgen train --shards shards/ --out runs/tiny --config tiny --batch-tokens 1024 --lr 3e-3 --warmup 20
    """
    ctx = click.get_current_context()
    opts = dict(shards_dir=shards_dir, config_name=config_name, steps=steps, batch_size=batch_size,
                batch_tokens=batch_tokens, lr=lr, warmup=warmup, seed=seed, stage=stage, substage=substage,
                budget_fraction=budget_fraction, log_every=log_every, total_steps=total_steps,
                compute_dtype=None, checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints,
                init_path=init_path, eval_every=eval_every, eval_sequences=eval_sequences, mesh=mesh,
                peak_flops=peak_flops, precision=precision, attention=attention, attention_block=attention_block,
                loss_chunk=loss_chunk, z_loss=z_loss, remat=remat, doc_mask=doc_mask, accum_steps=accum_steps,
                skip_spikes=skip_spikes, init_on=init_on)
    if resume:
        opts.update(resume_defaults(out_dir, typed={k for k in opts if not _defaulted(ctx, k)}))
    if opts["shards_dir"] is None:
        raise click.UsageError("Missing option '--shards' (only --resume can take it from OUT/run.json)")
    if opts["batch_tokens"] is not None and opts["batch_size"] is not None:
        raise click.UsageError("give --batch-tokens or --batch-size, not both")
    from xgen_train.scale.distributed import maybe_initialize

    maybe_initialize()  # multi-host start when the environment asks for it, before any device use
    from xgen_train.model.numerics import NumericsOptions
    from xgen_train.loop.trainer import train as run_train

    shards_dir, init_path = opts.pop("shards_dir"), opts.pop("init_path")
    numerics = NumericsOptions(**{k: opts.pop(k) for k in _NUMERICS})
    try:
        summary = run_train(shards_dir, out_dir, **opts, resume=True if resume else None, init=init_path,
                            verify=verify, progress=not quiet, numerics=numerics)
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


# option name -> where its value lives in OUT/run.json (dotted path)
_RUN_JSON_KEYS = {
    "shards_dir": "shards_dir", "config_name": "config_name", "batch_size": "batch.batch_size",
    "batch_tokens": "batch.batch_tokens", "lr": "optimizer.peak_lr", "warmup": "optimizer.warmup_steps",
    "seed": "seed", "stage": "data.stage", "substage": "data.substage", "budget_fraction": "data.budget_fraction",
    "compute_dtype": "compute_dtype", "init_path": "init.path", "steps": "settings.steps",
    "log_every": "settings.log_every", "checkpoint_every": "settings.checkpoint_every",
    "keep_checkpoints": "settings.keep_checkpoints", "eval_every": "settings.eval_every",
    "eval_sequences": "settings.eval_sequences", "mesh": "settings.mesh", "peak_flops": "settings.peak_flops",
    "init_on": "settings.init_on",
    # numerics (run.json records them resolved: compute_dtype carries the precision, so --precision stays auto)
    "attention": "numerics.attention", "attention_block": "numerics.attention_block",
    "loss_chunk": "numerics.loss_chunk", "z_loss": "numerics.z_loss", "remat": "numerics.remat",
    "doc_mask": "numerics.doc_mask", "accum_steps": "numerics.accum_steps", "skip_spikes": "numerics.skip_spikes",
}
_NUMERICS = ("precision", "attention", "attention_block", "loss_chunk", "z_loss", "remat", "doc_mask",
             "accum_steps", "skip_spikes")


def _defaulted(ctx: click.Context, name: str) -> bool:
    """True when option ``name`` was not typed (its value is click's default)."""
    src = ctx.get_parameter_source(name)
    return src is None or src == click.core.ParameterSource.DEFAULT


def _lookup(record: dict, dotted: str):
    cur = record
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return KeyError
        cur = cur[part]
    return cur


def resume_defaults(out_dir: str, typed: set[str]) -> dict:
    """Values from ``OUT/run.json`` for the options the user did not type (``xgen train --resume``).

    Only options that were not typed are filled; a typed value stays and, when it differs from the run's,
    the trainer refuses the resume listing ``key: old -> new``. The schedule length is filled only when the
    run gave it (``--total-steps``); otherwise the plan fixes it. ``--batch-size`` and ``--batch-tokens`` count
    as one choice (typing either keeps the other unset). Returns ``{}`` when there is no run.json.
    """
    path = os.path.join(out_dir, "run.json")
    try:
        with open(path, encoding="utf-8") as fh:
            record = json.load(fh)
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise DamagedDataError(f"{path}: not valid JSON ({exc}); cannot resume from it") from None
    skip = set(typed)
    if typed & {"batch_size", "batch_tokens"}:
        skip |= {"batch_size", "batch_tokens"}
    if typed & {"precision", "compute_dtype"}:  # one choice: a typed --precision is compared, not contradicted
        skip |= {"precision", "compute_dtype"}
    out = {}
    for name, dotted in _RUN_JSON_KEYS.items():
        if name in skip:
            continue
        value = _lookup(record, dotted)
        if value is not KeyError:
            out[name] = value
    if "total_steps" not in typed and record.get("optimizer", {}).get("total_steps") != record.get("total_steps"):
        out["total_steps"] = record["optimizer"]["total_steps"]  # the run set its own schedule length
    if out.get("init_path") is not None and not os.path.isdir(out["init_path"]):
        out.pop("init_path")  # the init folder is gone; the resumed state does not need it (the check will say)
    return out
