"""``xgen sft``: instruction-tuning data (thin layer over :mod:`xgen_data.sft`)."""
from __future__ import annotations

import json

import click

from cli.common import format_option, out_option, own_json, print_rows, quiet_option, report, show_progress, user_errors
from xgen_data.errors import ProblemFound
from xgen_data.sft import long_context, sft_format
from xgen_data.sft import prepare as prepare_mod


@click.group("sft")
def sft() -> None:
    """Instruction tuning data (SPEC §5): prepare SFT shards, make long-context examples, verify shards."""


@sft.command("prepare")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@out_option(help="SFT shards folder to write (replaced as a whole when it holds earlier SFT shards).")
@click.option("--seq-len", type=click.IntRange(2, 1 << 20), default=8192, show_default=True,
              help="Tokens per packed row (SPEC §5).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the packing order.")
@click.option("--validation-rows", type=click.IntRange(min=0), default=0, show_default=True,
              help="Packed rows held out as the validation split (the trainer's validation loss).")
@click.option("--overlong", type=click.Choice(["drop", "truncate"]), default="drop", show_default=True,
              help="Examples longer than a row: drop them, or keep their start (dropping one whose response "
                   "is cut away entirely); both counted.")
@click.option("--on-error", type=click.Choice(["raise", "skip"]), default="raise", show_default=True,
              help="A bad record: stop with file:line, or skip it and count it; a cut .gz/.zst input: stop, or "
                   "keep the records before the cut and go on (counted, file and line listed).")
@click.option("--system-header/--no-system-header", default=False, show_default=True,
              help="Render a record's system message as a header before the first turn (SPEC §5: off).")
@click.option("--oasst-paths", type=click.Choice(["best", "all"]), default="best", show_default=True,
              help="OAsst trees: the best-ranked root-to-leaf path, or every path.")
@click.option("--trim-unanswered", is_flag=True, default=False, show_default=True,
              help="Drop a last human turn that has no response (counted) instead of treating it as an error.")
@click.option("--decontaminate", "eval_sets", multiple=True, type=click.Path(dir_okay=False),
              help="Evaluation set JSONL (HumanEval, MMLU-style or prompt/reference rows); repeatable. "
                   "Examples sharing a word 13-gram (or, for code, a docstring/solution) are removed "
                   "[default: none].")
@format_option()
@quiet_option
@user_errors
@own_json
def prepare(inputs: tuple[str, ...], out_dir: str, seq_len: int, seed: int, validation_rows: int, overlong: str,
            on_error: str, system_header: bool, oasst_paths: str, trim_unanswered: bool, eval_sets: tuple[str, ...],
            fmt: str, quiet: bool) -> None:
    """Render, mask, decontaminate and pack instruction data in any known shape into SFT shards.

    INPUTS are JSONL (.jsonl, .jsonl.gz, .jsonl.zst) or Parquet files of {prompt, response}, Alpaca, Dolly,
    OpenAI messages, ShareGPT, OAsst trees or already rendered '### Human:' text, recognised per record.
    """
    opts = prepare_mod.Options(seq_len=seq_len, seed=seed, validation_rows=validation_rows, overlong=overlong,
                               on_error=on_error, system_header=system_header, oasst_all_paths=oasst_paths == "all",
                               trim_unanswered=trim_unanswered, decontaminate=list(eval_sets))
    manifest = prepare_mod.prepare(list(inputs), out_dir, opts)
    if show_progress(quiet):
        prepare_mod.print_errors(manifest)
    if fmt == "json":
        click.echo(json.dumps({k: manifest[k] for k in ("counts", "shapes", "padding_share", "decontamination",
                                                         "seq_len")}, ensure_ascii=False, indent=1))
        return
    print_rows(["what", "value"], prepare_mod.summary_rows(manifest), title=f"SFT shards written to {out_dir}")
    click.echo(f"Train on them with `xgen train --shards {out_dir} --init RUN --out RUN2`.")


@sft.command("long-context")
@click.option("--corpus", "corpus_dir", required=True, type=click.Path(file_okay=False),
              help="Corpus directory (made by `xgen ingest`).")
@out_option(help="Folder to write long_context.jsonl (input of `xgen sft prepare`) and report.json into.")
@click.option("--min-tokens", type=click.IntRange(min=1), default=4000, show_default=True,
              help="Least tokens of a rendered example (SPEC §5: SCROLLS examples of at least 4,000).")
@click.option("--max-tokens", type=click.IntRange(min=1), default=8192, show_default=True,
              help="Most tokens of a rendered example (the SFT --seq-len, so none is dropped as overlong).")
@click.option("--per-source", type=click.IntRange(min=1), default=1500, show_default=True,
              help="At most this many examples per source (the report's ~1,500 per SCROLLS task).")
@click.option("--task", "tasks", multiple=True, type=click.Choice(list(long_context.TASKS)),
              help="Task templates to draw from; repeatable [default: all three].")
@click.option("--subset", "subsets", multiple=True, help="Corpus subsets to read; repeatable [default: all].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of document order and task choice.")
@format_option()
@user_errors
@own_json
def long_context_cmd(corpus_dir: str, out_dir: str, min_tokens: int, max_tokens: int, per_source: int,
                     tasks: tuple[str, ...],
                     subsets: tuple[str, ...], seed: int, fmt: str) -> None:
    """Turn long corpus documents into instruction examples (summarise, answer a question, continue)."""
    report = long_context.make_examples(corpus_dir, out_dir, min_tokens=min_tokens, per_source=per_source,
                                        seed=seed, tasks=tasks or long_context.TASKS, subsets=list(subsets) or None,
                                        max_tokens=max_tokens)
    if fmt == "json":
        click.echo(json.dumps(report, indent=1, ensure_ascii=False))
        return
    rows = [("examples", report["examples"]), ("documents considered", report["documents_considered"]),
            ("too short", report["too_short"]), ("too long", report["too_long"]),
            ("no task found", report["no_task"])]
    rows += [(f"task {k}", v) for k, v in sorted(report["per_task"].items())]
    rows += [(f"source {k}", v) for k, v in sorted(report["per_source"].items())]
    print_rows(["what", "value"], rows, title=f"Long-context examples in {out_dir}/{long_context.OUTPUT}")
    click.echo(f"Pack them with `xgen sft prepare {out_dir}/{long_context.OUTPUT} --out SFT_DIR`.")


@sft.command("verify")
@click.argument("sft_dir", type=click.Path(file_okay=False))
@format_option()
@user_errors
def verify_cmd(sft_dir: str, fmt: str) -> None:
    """Check an SFT shards folder: the manifest's own checksum, every file's size and SHA-256; exit 1 on damage
    (each damaged or missing file listed), 3 when the folder is not readable as SFT shards."""
    problems = sft_format.verify(sft_dir)
    report(sft_dir=sft_dir, problems=problems)
    for p in problems:
        click.echo(p)
    if problems:
        raise ProblemFound(f"{sft_dir}: {len(problems)} damaged or missing file(s); rerun `xgen sft prepare`")
    click.echo(f"verify {sft_dir}: ok")
