"""``xgen plot``: figures from a training run. ``xgen plot loss RUN`` draws Figure 1 (SPEC §4) from
``RUN/metrics.jsonl`` (thin layer over :func:`xgen_train.loop.lossplot.plot_loss`; no JAX import)."""
from __future__ import annotations

import os

import click

from cli.common import format_option, out_option, report, user_errors
from xgen_data.errors import InputError


@click.group("plot")
def plot() -> None:
    """Figures from a training run."""


@plot.command("loss")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@out_option(required=False, help="Folder to write loss.png into (created if missing) [default: RUN].")
@click.option("--title", default="", help="Figure title (default: none).")
@format_option()
@user_errors
def loss(run_dir: str, out_dir: str | None, title: str, fmt: str) -> None:
    """Figure 1: train and validation loss over tokens seen, each sub-stage boundary marked and labelled."""
    from xgen_train.loop.lossplot import plot_loss, read_metrics

    records = read_metrics(run_dir)
    if not any("event" not in r and "loss" in r for r in records):
        raise InputError(f"{os.path.join(run_dir, 'metrics.jsonl')}: no training records to plot")
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
    res = plot_loss(records, os.path.join(out_dir or run_dir, "loss.png"), title=title)
    report(path=str(res["path"]), train_points=res["train_points"], val_points=res["val_points"])
    click.echo(f"wrote {res['path']}: {res['train_points']} train points, {res['val_points']} validation points, "
               f"{len(res['boundaries'])} sub-stage(s)")
    for b in res["boundaries"]:
        click.echo(f"  step {b.step:>8,}  tokens {b.tokens_seen:>14,}  {b.label}")
