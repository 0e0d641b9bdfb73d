"""``xgen demo``: the whole recipe end to end: ingest, tokenize, filter, dedup, plan, build, train, summary.

A thin sequence of library calls; each step is also its own command (see ``docs/architecture.md``).
"""
from __future__ import annotations

import os
import time

import click

from cli.common import print_rows, user_errors


#: What `xgen train` writes into its output folder; a demo re-run may replace a run folder holding only these.
TRAINER_OUTPUTS = {"metrics.jsonl", "run.json", "summary.json", "loss.png", "checkpoints"}


def _check_run_dir(run_dir: str) -> None:
    if os.path.isdir(run_dir):
        foreign = sorted(set(os.listdir(run_dir)) - TRAINER_OUTPUTS)
        if foreign:
            raise click.ClickException(f"{run_dir}: holds files the demo did not write ({', '.join(foreign[:3])}); "
                                       "move them away or choose another --workdir")


@click.command()
@click.option("--workdir", required=True, type=click.Path(file_okay=False),
              help="Holds corpus/, shards/ and run/ (and raw/ for the embedded corpus).")
@click.option("--corpus", "corpus_src", default=None, type=click.Path(exists=True, file_okay=False),
              help="Folder of corpora (.jsonl, .jsonl.gz, .jsonl.zst, .parquet), e.g. ../shared/corpus. "
                   "Default: the running Python's standard library (code) and its documentation (natural).")
@click.option("--recipe", "recipe_name", default="demo", show_default=True, help="Recipe name or path.")
@click.option("--steps", default=200, show_default=True, type=click.IntRange(1), help="Training steps.")
@click.option("--batch-size", default=4, show_default=True, type=click.IntRange(1))
@click.option("--config", "config_name", default="tiny", show_default=True, help="Model config (xgen_train.config).")
@click.option("--lr", default=3e-3, show_default=True, type=float, help="Peak learning rate.")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 256))
@click.option("--on-error", type=click.Choice(["raise", "skip"]), default="skip", show_default=True,
              help="Bad input records: skip (counted and reported) or stop.")
@user_errors
def demo(workdir: str, corpus_src: str | None, recipe_name: str, steps: int, batch_size: int, config_name: str,
         lr: float, workers: int, on_error: str) -> None:
    """Run the XGen recipe end to end on real text and train a tiny model on the shards."""
    import dataclasses

    from cli.ingest_cmd import expand_inputs, print_ingest
    from cli.mix_cmd import print_build, print_plan, print_steps
    from xgen_data import fsutil, ingest, packing, pipeline, recipe, sql, stdlib_corpus
    from xgen_data.corpus import Corpus
    from xgen_data.plots import length_histogram

    t0 = time.time()
    timings = {}
    corpus_dir = os.path.join(workdir, "corpus")
    shards_dir = os.path.join(workdir, "shards")
    run_dir = os.path.join(workdir, "run")
    r = recipe.load(recipe_name)
    _check_run_dir(run_dir)
    if corpus_src is None:
        click.echo("Writing the embedded corpus: Python's standard library (code) and its documentation")
        inputs = stdlib_corpus.write_corpus(os.path.join(workdir, "raw"))
        if stdlib_corpus.LICENSE not in r.allow_list():
            # The stdlib is PSF-2.0, which is not on SPEC §2's list: allow it for this corpus, and say so.
            r = dataclasses.replace(r, license_allow_extra=r.license_allow_extra + (stdlib_corpus.LICENSE,))
            click.echo(f"      note: {stdlib_corpus.LICENSE} added to the license allow-list for the embedded corpus")
    else:
        inputs = expand_inputs((corpus_src,))
    # Save the recipe exactly as this demo uses it, so later commands on the workdir can reuse it.
    recipe_path = os.path.join(workdir, "recipe.toml")
    os.makedirs(workdir, exist_ok=True)
    with fsutil.atomic_path(recipe_path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(recipe.to_toml(r))
    r = recipe.load(recipe_path)
    click.echo(f"[1/5] Ingest and tokenize {len(inputs)} files into {corpus_dir}")
    t = time.time()
    print_ingest(ingest.ingest(corpus_dir, [(p, None) for p in inputs], workers=workers, on_error=on_error))
    timings["ingest"] = time.time() - t

    click.echo("[2/5] Filters and dedup (recipe steps)")
    with Corpus(corpus_dir).lock():  # steps, plan and packing see one consistent set of decisions
        t = time.time()
        print_steps(pipeline.apply_recipe_steps(corpus_dir, r, workers=workers))
        timings["filter+dedup"] = time.time() - t

        lengths_png = length_histogram(corpus_dir, os.path.join(workdir, "lengths.png"), r.min_tokens, recipe=r)
        click.echo(f"[3/5] Mixture plan, recipe {r.name!r}")
        docs = packing.kept_documents(corpus_dir, r.subsets(), r)
        print_plan(r, docs, corpus_dir)

        click.echo(f"[4/5] Build shards into {shards_dir}")
        t = time.time()
        build = packing.build(corpus_dir, r, shards_dir)
        timings["build"] = time.time() - t
    print_build(r, build)

    first = r.stages[0]
    click.echo(f"[5/5] Train {config_name!r} for {steps} steps on {first.name}/{first.substages[0].name}")
    from xgen_train.trainer import train

    if os.path.isdir(run_dir):
        import shutil

        shutil.rmtree(run_dir)  # the demo's own earlier run (checked above): a demo trains from scratch
    t = time.time()
    summary = train(shards_dir, run_dir, config_name=config_name, steps=steps, batch_size=batch_size, lr=lr,
                    warmup=max(1, steps // 10), seed=r.seed, stage=first.name, substage=first.substages[0].name)
    timings["train"] = time.time() - t

    click.echo(click.style("\n==== xgen demo summary ====", bold=True))
    con = sql.connect(corpus_dir, recipe=r)
    rows = con.execute("""SELECT subset, count(*) AS documents_in, count(*) FILTER (kept) AS documents_out,
        count(*) FILTER (drop_reason = 'too_few_tokens') AS too_few_tokens,
        count(*) FILTER (drop_reason = 'license_not_permissive') AS license_not_permissive,
        count(*) FILTER (drop_reason = 'exact_duplicate') AS exact_duplicate,
        count(*) FILTER (drop_reason = 'near_duplicate') AS near_duplicate
        FROM documents GROUP BY subset ORDER BY subset""").fetchall()
    print_rows(["subset", "documents_in", "documents_out", "too_few_tokens", "license_not_permissive",
                "exact_duplicate", "near_duplicate"], rows, title="Documents in and out, by drop reason")
    print_build(r, build)
    print_rows(["metric", "value"], [
        ("model", f"{config_name} ({summary['n_params']:,} parameters)"),
        ("trained on", f"{summary['stage']}/{summary['substage']}, seq_len {summary['seq_len']}, batch {batch_size}"),
        ("loss first (mean of 10)", summary["first_loss_mean10"]),
        ("loss last (mean of 10)", summary["last_loss_mean10"]),
        ("tokens/s", f"{summary['tokens_per_second']:,.0f}"),
        ("checkpoint", summary["checkpoint"]),
        ("loss curve", summary["plot"]),
        ("length histogram", lengths_png),
        *[(f"time {k}", f"{v:.1f} s") for k, v in timings.items()],
        ("time total", f"{time.time() - t0:.1f} s"),
    ], title="Training")
    click.echo(f"Recipe used: {recipe_path}. Try:\n"
               f"  xgen sql --corpus {corpus_dir} \"SELECT stage, substage, seq_len, sum(n_sequences) AS sequences "
               f"FROM shards WHERE shard_dir LIKE '%{os.path.basename(os.path.abspath(shards_dir))}' GROUP BY ALL ORDER BY 1, 3\"\n"
               f"  xgen mix plan --corpus {corpus_dir} --recipe {recipe_path}")
