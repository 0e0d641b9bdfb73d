"""``xgen demo``: the whole recipe end to end: ingest, tokenize, filter, dedup, plan, build, train, summary.

A thin sequence of library calls; each step is also its own command (see ``docs/architecture.md``).
"""
from __future__ import annotations

import os
import shlex
import time

import click

from cli.common import executor_options, number, print_rows, quiet_option, user_errors
from cli.ingest_cmd import id_from_option
from xgen_data.errors import RefusedError

#: What `xgen train` writes into its output folder; the demo moves aside a run folder holding only these.
TRAINER_OUTPUTS = {"metrics.jsonl", "run.json", "summary.json", "loss.png", "checkpoints", "eval"}


def _check_run_dir(run_dir: str) -> None:
    if os.path.isdir(run_dir):
        foreign = sorted(set(os.listdir(run_dir)) - TRAINER_OUTPUTS)
        if foreign:
            raise RefusedError(f"{run_dir}: holds files the demo did not write ({', '.join(foreign[:3])}); "
                               "move them away or choose another --workdir")


def move_aside(run_dir: str) -> str | None:
    """Rename an earlier ``run_dir`` to the first free ``run_dir.prev-N`` (never deletes); return the new name."""
    if not os.path.exists(run_dir):
        return None
    n = 1
    while os.path.exists(f"{run_dir}.prev-{n}"):
        n += 1
    os.rename(run_dir, f"{run_dir}.prev-{n}")
    return f"{run_dir}.prev-{n}"


def _allow_embedded_license(r, lic: str):
    """The recipe with ``lic`` (the embedded corpus's PSF-2.0, on neither SPEC §2 list) added to the allow-list
    of every policy the recipe uses that lacks it, each addition said on the output."""
    import dataclasses

    names = set(r.license_policies().values())
    added = []
    if "permissive" in names and lic not in r.allow_list():
        r = dataclasses.replace(r, license_allow_extra=r.license_allow_extra + (lic,))
        added.append("permissive (stage-1 code)")
    for name in sorted(names - {"permissive"}):
        if lic not in r.policy(name).allow:
            extra = dict(r.policy_allow_extra)
            extra[name] = extra.get(name, ()) + (lic,)
            r = dataclasses.replace(r, policy_allow_extra=extra)
            subsets = ", ".join(s for s, p in r.license_policies().items() if p == name)
            added.append(f"{name} ({subsets})")
    if added:
        click.echo(f"      note: {lic} added to the license allow-list of policy {' and '.join(added)} for the "
                   "embedded corpus (the recipe saved in the workdir records it)")
    return r


def _split_code(code_inputs: list[str], raw_dir: str, seed: int):
    """Split the corpus's code files into stage-1 ``code`` and a StarCoderData-layout ``starcoder`` (disjoint)."""
    import itertools

    from xgen_data.sources import code_split

    readers = [code_split.corpus_lines(p) for p in code_inputs]
    click.echo(f"      splitting {', '.join(os.path.basename(p) for p in code_inputs)} into stage-1 code and a "
               f"StarCoder-style stage-2 subset in {raw_dir}")
    return code_split.write_split(lambda: itertools.chain.from_iterable(f() for f in readers), raw_dir, seed)


@click.command()
@click.option("--workdir", required=True, type=click.Path(file_okay=False),
              help="Holds corpus/, shards/ and run/ (and raw/ for the embedded corpus).")
@click.option("--sources", "corpus_src", default=None, type=click.Path(exists=True, file_okay=False),
              help="Folder of raw corpora (.jsonl, .jsonl.gz, .jsonl.zst, .parquet), e.g. ../shared/corpus. "
                   "Default: the running Python's standard library (code) and its documentation (natural).")
@click.option("--recipe", "recipe_name", default="demo", show_default=True, help="Recipe name or path.")
@click.option("--steps", default=200, show_default=True, type=click.IntRange(1),
              help="About this many updates in all: every sub-stage trains on the same fraction of its budget "
                   "(at least one update each, whole batches); the plan prints the real number.")
@click.option("--batch-tokens", default=1024, show_default=True, type=click.IntRange(1),
              help="Tokens per update, constant across sub-stages (4 x 256, 2 x 512, 1 x 1024).")
@click.option("--batch-size", default=None, type=click.IntRange(1),
              help="Sequences per update instead of --batch-tokens.")
@click.option("--config", "config_name", default="tiny", show_default=True,
              help="Model config (xgen_train.model.config).")
@click.option("--lr", default=3e-3, show_default=True, type=number(min=0, min_open=True), help="Peak learning rate.")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 256),
              help="Worker processes for ingest, filters and dedup.")
@click.option("--on-error", type=click.Choice(["raise", "skip"]), default="skip", show_default=True,
              help="Bad input records: skip (counted and reported) or stop.")
@id_from_option
@executor_options
@quiet_option
@user_errors
def demo(workdir: str, corpus_src: str | None, recipe_name: str, steps: int, batch_tokens: int,
         batch_size: int | None, config_name: str, lr: float, workers: int, on_error: str, id_from: str | None,
         executor: str, ray_address: str | None, quiet: bool) -> None:
    """Run the XGen recipe end to end on real text and train a tiny model across all its sub-stages.

    Stage 2's StarCoder data is made from the corpus's own code: its files are split in two disjoint halves,
    stage-1 ``code`` and a ``starcoder`` subset the demo writes in StarCoderData's Parquet layout."""
    from cli.ingest_cmd import expand_inputs, print_ingest
    from cli.mix_cmd import print_build, print_plan, print_steps
    from xgen_data.execute import executors
    from xgen_data.mixing import pipeline, recipe, selection
    from xgen_data.shards import packing
    from xgen_data.sources import code_split, ingest, stdlib_corpus
    from xgen_data.stats import sql
    from xgen_data.stats.plots import length_histogram
    from xgen_data.store import fsutil
    from xgen_data.store.corpus import Corpus

    t0 = time.time()
    timings = {}
    corpus_dir = os.path.join(workdir, "corpus")
    shards_dir = os.path.join(workdir, "shards")
    run_dir = os.path.join(workdir, "run")
    raw_dir = os.path.join(workdir, "raw")
    r = recipe.load(recipe_name)
    _check_run_dir(run_dir)  # before hours of work: a folder that is not an earlier demo run is refused
    _check_run_dir(os.path.join(workdir, "sft-run"))
    executors.check_executor(executor, ray_address)  # e.g. Ray not installed: refused before any work
    wants_starcoder = "starcoder" in r.subsets()
    if corpus_src is None:
        click.echo("Writing the embedded corpus: Python's standard library (code) and its documentation")
        # a recipe without a `starcoder` subset keeps all code in stage-1 `code`
        inputs, split = stdlib_corpus.write_corpus(raw_dir, seed=r.seed, starcoder=wants_starcoder)
        r = _allow_embedded_license(r, stdlib_corpus.LICENSE)
    else:
        inputs = expand_inputs((corpus_src,))
        split = None
        code_inputs = [p for p in inputs if ingest.default_subset(p) == "code"]
        if wants_starcoder and code_inputs:
            split = _split_code(code_inputs, raw_dir, r.seed)
            has_code = split.code_path in split.ingest_paths()  # False when every file went to starcoder
            inputs = [split.code_path if p == code_inputs[0] else p for p in inputs
                      if p not in code_inputs[1:] and (has_code or p != code_inputs[0])]
            inputs += split.starcoder_paths
    if split is not None and split.starcoder_paths:
        star, code = split.starcoder, split.code
        click.echo(f"      stage-2 subset starcoder: {sum(star.values()):,} code files in {len(star)} languages "
                   f"({', '.join(f'{k} {v:,}' for k, v in star.most_common())}) written in StarCoderData's layout to "
                   f"{split.starcoder_root}/<language>/{code_split.STARCODER_FILE}; stage-1 code keeps the other "
                   f"{sum(code.values()):,} files (disjoint halves: per language, sha256(seed:id) order alternates)")
    # Save the recipe exactly as this demo uses it, so later commands on the workdir can reuse it.
    recipe_path = os.path.join(workdir, "recipe.toml")
    os.makedirs(workdir, exist_ok=True)
    with fsutil.atomic_path(recipe_path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(recipe.to_toml(r))
    r = recipe.load(recipe_path)
    click.echo(f"[1/6] Ingest and tokenize {len(inputs)} files into {corpus_dir}")
    t = time.time()
    star_root = split.starcoder_root if split is not None else None
    print_ingest(ingest.ingest(corpus_dir, [(p, None, star_root if star_root and p.startswith(star_root + os.sep)
                                             else None) for p in inputs], workers=workers, on_error=on_error, progress=not quiet,
                               executor=executor, ray_address=ray_address, id_from=id_from))
    timings["ingest"] = time.time() - t

    click.echo("[2/6] Filters and dedup (recipe steps)")
    with Corpus(corpus_dir).lock():  # steps, plan and packing see one consistent set of decisions
        t = time.time()
        print_steps(pipeline.apply_recipe_steps(corpus_dir, r, workers=workers, executor=executor,
                                                ray_address=ray_address))
        timings["filter+dedup"] = time.time() - t

        lengths_png = length_histogram(corpus_dir, os.path.join(workdir, "lengths.png"), r.min_tokens, recipe=r)
        click.echo(f"[3/6] Mixture plan, recipe {r.name!r}")
        docs = selection.kept_documents(corpus_dir, r.subsets(), r)
        print_plan(r, docs, corpus_dir)

        click.echo(f"[4/6] Build shards into {shards_dir}")
        t = time.time()
        build = packing.build(corpus_dir, r, shards_dir)
        timings["build"] = time.time() - t
    print_build(r, build)

    from xgen_train.loop.curriculum import make_plan
    from xgen_train.loop.data import load_manifest
    from xgen_train.loop.trainer import train

    if batch_size is not None:
        batch_tokens = None
    manifest = load_manifest(shards_dir)
    full = make_plan(manifest, batch_tokens=batch_tokens, batch_size=batch_size)
    # the same fraction of every sub-stage's budget, large enough that each trains at least one update
    fraction = min(1.0, max(steps / full.total_steps,
                            *[(ph.batch_size + 0.5) / ph.n_sequences for ph in full.phases if ph.n_sequences]))
    scaled = make_plan(manifest, batch_tokens=batch_tokens, batch_size=batch_size, budget_fraction=fraction)
    n_sub = len(full.phases)
    click.echo(f"[5/6] Train {config_name!r} across all {n_sub} sub-stages in one run: {fraction:.1%} of each "
               f"sub-stage's budget, {scaled.total_steps:,} of {full.total_steps:,} updates"
               + (f" (--steps {steps}: each sub-stage rounds to whole batches and trains at least one)"
                  if scaled.total_steps != steps else ""))
    moved = move_aside(run_dir)
    if moved:
        click.echo(f"      the earlier run in {run_dir} was moved to {moved} (nothing deleted)")
    t = time.time()
    summary = train(shards_dir, run_dir, config_name=config_name, batch_tokens=batch_tokens, batch_size=batch_size,
                    lr=lr, warmup=max(1, steps // 10), seed=r.seed, budget_fraction=fraction,
                    eval_every=max(1, steps // 6), eval_sequences=4, progress=not quiet, log_every=max(1, steps // 10))
    timings["train"] = time.time() - t
    t = time.time()
    hf_dir = os.path.join(workdir, "hf")
    moved = move_aside(hf_dir)
    if moved:
        click.echo(f"      the earlier export in {hf_dir} was moved to {moved} (nothing deleted)")
    fig2, hf_dir = _hand_over(corpus_dir, run_dir, hf_dir, r)
    timings["figure 2 + export"] = time.time() - t
    t = time.time()
    sft = _sft_step(workdir, inputs, run_dir, config_name, steps, r.seed, raw_dir)
    timings["instruction tuning"] = time.time() - t

    click.echo(click.style("\n==== xgen demo summary ====", bold=True))
    con = sql.connect(corpus_dir, recipe=r)
    print_drop_summary(con, r)
    print_build(r, build)
    print_language_build(r, build, shards_dir)
    print_rows(["metric", "value"], [
        ("model", f"{config_name} ({summary['n_params']:,} parameters)"),
        *[(f"sub-stage {ph['stage']}/{ph['substage']}", f"seq_len {ph['seq_len']} x batch {ph['batch_size']}, "
           f"steps {ph['start_step']}..{ph['end_step']}") for ph in summary["phases"]],
        ("updates / tokens seen", f"{summary['final_step']:,} / {summary['tokens_seen']:,}"),
        ("loss first (mean of 10)", summary["first_loss_mean10"]),
        ("loss last (mean of 10)", summary["last_loss_mean10"]),
        ("validation loss (last)", summary["val_loss"]),
        ("tokens/s", f"{summary['tokens_per_second']:,.0f}"),
        ("checkpoint", summary["checkpoint"]),
        ("Figure 1 (loss over tokens, sub-stages marked)", summary["plot"]),
        (f"Figure 2 (perplexity by position, {fig2['n_docs']} documents of {fig2['min_tokens']:,} tokens)",
         fig2["png"]),
        ("Hugging Face folder (LlamaForCausalLM)", hf_dir),
        (f"instruction tuning ({sft['examples']:,} examples, {sft['steps']} updates)",
         f"response loss {sft['first_loss']:.3f} -> {sft['last_loss']:.3f}"),
        ("response-loss curve (SFT)", sft["plot"]),
        ("SFT model's Hugging Face folder (with chat_template)", sft["hf_dir"]),
        ("length histogram", lengths_png),
        *[(f"time {k}", f"{v:.1f} s") for k, v in timings.items()],
        ("time total", f"{time.time() - t0:.1f} s"),
    ], title="Training")
    click.echo(f"Figure 1: {summary['plot']} (train and validation loss over tokens seen; "
               f"{len(summary['switches'])} sub-stage switches marked)")
    click.echo(f"Hugging Face: AutoModelForCausalLM.from_pretrained({hf_dir!r}) and AutoTokenizer.from_pretrained"
               f"({hf_dir!r}) (docs/export.md); a model this small repeats newlines when decoding greedily, so the "
               "sample below uses --temperature 0.8")
    click.echo(f"Recipe used: {recipe_path}.")
    click.echo(NEXT_HEADING)
    for cmd in next_commands(corpus_dir, shards_dir, run_dir, hf_dir, recipe_path):
        click.echo(f"  {shlex.join(cmd)}")


#: The line before the demo's suggested commands (one per line, each runs as printed; tests/test_demo.py runs them).
NEXT_HEADING = "Next, try:"


def next_commands(corpus_dir: str, shards_dir: str, run_dir: str, hf_dir: str, recipe_path: str) -> list[list[str]]:
    """The commands the demo suggests, as argument lists (each works as printed on the demo's workdir)."""
    shards_name = os.path.basename(os.path.abspath(shards_dir))
    return [
        ["xgen", "plot", "loss", run_dir],
        ["xgen", "generate", hf_dir, "--prompt", "def ", "--temperature", "0.8", "--seed", "0"],
        ["xgen", "sql", "--corpus", corpus_dir, "--recipe", recipe_path,
         "SELECT subset, drop_reason, count(*) FROM documents GROUP BY ALL ORDER BY 1, 3 DESC"],
        ["xgen", "sql", "--corpus", corpus_dir, "SELECT stage, substage, split, seq_len, sum(n_sequences) AS sequences "
         f"FROM shards WHERE shard_dir LIKE '%{shards_name}' GROUP BY ALL ORDER BY 1, 4, 3"],
        ["xgen", "mix", "plan", "--corpus", corpus_dir, "--recipe", recipe_path],
        ["xgen", "eval", "ppl-by-position", run_dir, "--corpus", corpus_dir, "--max-docs", "4"],
    ]


SFT_SEQ_LEN = 512  # the demo's SFT rows: within every demo sub-stage's model positions


def _sft_step(workdir: str, inputs: list[str], run_dir: str, config_name: str, steps: int, seed: int,
              raw_dir: str) -> dict:
    """[6/6] A short instruction-tuning step (SPEC §5) from the pre-trained run: the corpus's instruct inputs
    (or, for the embedded corpus, which has none, Q&A pairs from the standard library's documentation) ->
    SFT shards -> a few updates from ``run_dir`` -> the response-loss curve, one chat exchange and the SFT
    model's Hugging Face folder. Scaled to the demo: ``max(4, steps // 5)`` updates of 2 rows at a learning rate
    of 1e-3 (SPEC §5's 2e-5 moves a tiny model too little in so few updates)."""
    from xgen_data.sft import prepare as sft_prepare
    from xgen_data.sources import ingest, stdlib_corpus
    from xgen_train.evaluate import chat
    from xgen_train.export.hf import export_hf
    from xgen_train.loop.checkpoint import load_params
    from xgen_train.loop.trainer import train

    instruct = [p for p in inputs if ingest.default_subset(p) == "instruct"]
    what, prompt = "the corpus's instruct subset", "What is your name?"
    if not instruct:
        instruct = [stdlib_corpus.write_instructions(raw_dir)]
        what, prompt = "Q&A from the standard library's docs", "What is the Python module json for?"
    sft_dir, sft_run = os.path.join(workdir, "sft"), os.path.join(workdir, "sft-run")
    n_steps = max(4, steps // 5)
    click.echo(f"[6/6] Instruction tuning on {what} ({len(instruct)} file(s)): SFT shards in {sft_dir}, "
               f"{n_steps} updates from {run_dir}")
    m = sft_prepare.prepare(instruct, sft_dir, sft_prepare.Options(seq_len=SFT_SEQ_LEN, seed=seed, on_error="skip",
                                                                   trim_unanswered=True, validation_rows=1))
    click.echo(f"      {m['counts']['packed']:,} examples in {m['counts']['rows']:,} rows of {SFT_SEQ_LEN} "
               f"(padding {m['padding_share']:.1%}; skipped {m['counts']['skipped']}, dropped overlong "
               f"{m['counts']['dropped_overlong']})")
    if moved := move_aside(sft_run):
        click.echo(f"      the earlier SFT run in {sft_run} was moved to {moved} (nothing deleted)")
    summary = train(sft_dir, sft_run, config_name=config_name, init=run_dir, steps=n_steps, total_steps=n_steps,
                    batch_size=2, lr=1e-3, warmup=1, seed=seed, eval_every=max(1, n_steps // 2), eval_sequences=1, progress=True,
                    log_every=1)
    cfg, params = load_params(sft_run)
    reply = chat.reply(params, cfg, [], prompt, max_new_tokens=24)
    click.echo(f"      chat: ### Human: {prompt}\n            ### Assistant: {reply.text!r} (stop: {reply.stop})")
    if moved := move_aside(os.path.join(workdir, "hf-sft")):
        click.echo(f"      the earlier SFT export was moved to {moved} (nothing deleted)")
    hf_dir = str(export_hf(sft_run, os.path.join(workdir, "hf-sft")))
    click.echo(f"      exported {sft_run} to {hf_dir} (tokenizer_config.json carries the chat_template)")
    return {"examples": m["counts"]["packed"], "steps": summary["final_step"], "first_loss": summary["first_loss"],
            "last_loss": summary["last_loss"], "plot": os.path.join(sft_run, "loss.png"), "hf_dir": hf_dir,
            "chat": (prompt, reply.text)}


def print_drop_summary(con, r) -> None:
    """Documents in and out per subset by drop reason, and one line reconciling them with the dedup step:
    dedup counts every copy it removes, also of documents a filter already dropped, while ``drop_reason``
    names the filter first, so a copy both short and duplicated is counted once, under the filter."""
    from xgen_data.query import REASON_EXACT, REASON_LICENSE, REASON_NEAR, REASON_SHORT

    rows = con.execute("""SELECT subset, any_value(license_policy) AS policy, count(*) AS documents_in,
        count(*) FILTER (drop_reason = $short), count(*) FILTER (drop_reason = $license),
        count(*) FILTER (drop_reason = $exact), count(*) FILTER (drop_reason = $near),
        count(*) FILTER (kept) AS documents_out
        FROM documents GROUP BY subset ORDER BY subset""",
                       {"short": REASON_SHORT, "license": REASON_LICENSE, "exact": REASON_EXACT,
                        "near": REASON_NEAR}).fetchall()
    print_rows(["subset", "license_policy", "documents_in", "too_few_tokens", "license_fails", "exact_duplicate",
                "near_duplicate", "documents_out"], [(a, b or "-", *rest) for a, b, *rest in rows],
               title="Documents in and out, by drop reason (each document counted once: a filter's reason first)")
    exact, near, under_filter = con.execute("""SELECT count(*) FILTER (dup_reason = $exact),
        count(*) FILTER (dup_reason = $near),
        count(*) FILTER (dup_reason IS NOT NULL AND drop_reason <> dup_reason) FROM documents""",
                                            {"exact": REASON_EXACT, "near": REASON_NEAR}).fetchone()
    if exact or near:
        click.echo(f"Dedup (step 2) removed {exact + near:,} copies ({exact:,} exact, {near:,} near); {under_filter:,} "
                   f"of them a filter drops anyway, so the table counts {exact + near - under_filter:,} under "
                   "exact_duplicate / near_duplicate.")


def print_language_build(r, build, shards_dir: str) -> None:
    """Per subset weighted by language: planned share (recipe ``languages``) against the share packed."""
    from xgen_data.shards import shard_format

    plan = shard_format.read_manifest(shards_dir).get("language_plan", [])
    rows = []
    for stage, per_subset in build.tokens_per_language.items():
        for subset, got in per_subset.items():
            mine = [p for p in plan if p["stage"] == stage and p["subset"] == subset]
            want_total = sum(p["effective_tokens"] for p in mine) or 1
            got_total = sum(got.values()) or 1
            for p in sorted(mine, key=lambda p: -p["effective_tokens"]):
                rows.append((stage, subset, p["language"], p["documents"], f"{p['share']:.4%}",
                             p["effective_tokens"], f"{p['effective_tokens'] / want_total:.4%}",
                             got.get(p["language"], 0), f"{got.get(p['language'], 0) / got_total:.4%}"))
    if rows:
        print_rows(["stage", "subset", "language", "documents", "unique_share", "planned_tokens", "planned_share",
                    "packed_tokens", "packed_share"], rows,
                   title="Per-language weights: plan (tokens incl. one EOS per document) against packed content tokens")


def _hand_over(corpus_dir: str, run_dir: str, hf_dir: str, r) -> tuple[dict, str]:
    """Figure 2 (perplexity by token position on kept documents at least as long as the longest trained
    sequence, at most 16) into ``run_dir/eval``, and the Hugging Face export of the run into ``hf_dir``."""
    from xgen_train.evaluate import evaluation as ev
    from xgen_train.export.hf import export_hf
    from xgen_train.loop.checkpoint import load_params

    cfg, params = load_params(run_dir)
    n = min(ev.trained_seq_len(run_dir) or cfg.max_positions, cfg.max_positions)
    docs = ev.long_documents(corpus_dir, n, max_docs=16, recipe=r)
    res = ev.ppl_by_position(params, cfg, docs)
    paths = ev.write_ppl_outputs(res, os.path.join(run_dir, "eval"), title=f"{r.name}: perplexity by position")
    click.echo(f"      Figure 2: {paths['png']} ({res.n_docs} documents of {n:,} tokens)")
    out = export_hf(run_dir, hf_dir)
    click.echo(f"      exported {run_dir} to {out} (config.json, model.safetensors, tokenizer.json, ...)")
    return {"png": str(paths["png"]), "n_docs": res.n_docs, "min_tokens": n}, str(out)
