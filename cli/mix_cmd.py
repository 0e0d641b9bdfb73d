"""``xgen mix plan|build``: mixtures by sampling proportion and packed shards (SPEC §2)."""
from __future__ import annotations

import dataclasses

import click

from cli.common import corpus_option, executor_options, format_option, print_rows, print_step_reports, user_errors


@click.group()
def mix() -> None:
    """Plan and build stage mixtures from a recipe (docs/recipes.md; shipped: demo, xgen-7b)."""


def _recipe(name: str, seed: int | None):
    from xgen_data.mixing import recipe

    r = recipe.load(name)
    r = dataclasses.replace(r, seed=seed) if seed is not None else r
    click.echo(f"recipe {r.name!r} from {r.path or name}, seed {r.seed}", err=True)
    return r


recipe_option = click.option("--recipe", "recipe_name", required=True,
                             help="Recipe: a shipped name (demo, xgen-7b), a TOML path (e.g. the demo's "
                                  "W/recipe.toml) or a shards folder (the recipe it was built with).")
seed_option = click.option("--seed", type=click.IntRange(0), default=None, help="Override the recipe's seed.")
workers_option = click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 256),
                              help="Worker processes for the recipe's filters and dedup.")


def print_plan(recipe, docs, corpus_dir: str) -> None:
    """Print the mixture plan per stage and subset, sequences per sub-stage, and missing or unused subsets."""
    from xgen_data.store.corpus import Corpus

    corpus_subsets = Corpus(corpus_dir).subsets()
    from xgen_data.mixing import mixture, selection

    plan_rows = mixture.plan(recipe, selection.subset_stats(docs))
    print_plan_rows(recipe, plan_rows)
    print_language_plan(mixture.language_plan(recipe, docs))
    for subset in sorted({r.subset for r in plan_rows if not r.documents}):
        stages = ", ".join(sorted({r.stage for r in plan_rows if r.subset == subset}))
        click.echo(click.style(f"warning ({stages}): {selection.why_empty(corpus_dir, subset, recipe)}; `xgen mix build` "
                               "will stop", fg="yellow"))
    for line in mixture.packing_notes(recipe):
        click.echo(f"rounding: {line}")
    unused = sorted(set(corpus_subsets) - set(recipe.subsets()))
    if unused:
        click.echo(f"note: corpus subsets not in this recipe (not packed): {', '.join(unused)}")


def print_plan_rows(recipe, plan_rows) -> None:
    """Print the plan tables: per stage and subset (tokens, and effective tokens in B/M/K as Table 2 prints billions),
    each stage's total and how it was given (replay + own subsets), and the sub-stages."""
    from xgen_data.mixing import mixture

    rows = []
    for st in recipe.stages:
        mine = [r for r in plan_rows if r.stage == st.name]
        rows += [(r.stage, r.subset, r.documents, r.unique_tokens, r.effective_tokens,
                  mixture.short_tokens(r.effective_tokens), f"{r.proportion:.4%}",
                  f"{r.epochs:.4f}" if r.documents else "-") for r in mine]
        rows.append((st.name, "(total)", sum(r.documents for r in mine), sum(r.unique_tokens for r in mine),
                     st.tokens, mixture.short_tokens(st.tokens), "100.0000%", ""))
    print_rows(["stage", "subset", "documents", "unique_tokens", "effective_tokens", "effective", "proportion",
                "epochs"], rows,
               title=f"Mixture plan: recipe {recipe.name!r}, seed {recipe.seed} (tokens include one EOS per document)")
    for st in recipe.stages:
        click.echo(mixture.stage_summary(st))
    rows = [(st.name, ss.name, ss.seq_len, ss.tokens, mixture.short_tokens(ss.tokens), ss.n_sequences,
             ss.n_sequences * ss.seq_len, ss.tokens - ss.n_sequences * ss.seq_len)
            for st in recipe.stages for ss in st.substages]
    print_rows(["stage", "substage", "seq_len", "tokens", "tokens_short", "sequences", "packed_tokens", "difference"],
               rows, title="Sub-stages (asked tokens; packed = whole sequences)")


def print_language_plan(rows) -> None:
    """Print the per-language table of subsets weighted by language (unique tokens, share, effective, epochs),
    each language's kind (:func:`xgen_data.attributes.languages.kind`) and, per subset, how many of StarCoder's 86
    programming languages, of the data formats and of the extras it holds."""
    from xgen_data.attributes import languages

    if not rows:
        return
    print_rows(["stage", "subset", "language", "kind", "documents", "unique_tokens", "share", "effective_tokens",
                "epochs"],
               [(r.stage, r.subset, r.language, languages.kind(r.language) or "-", r.documents, r.unique_tokens,
                 f"{r.share:.4%}", r.effective_tokens, f"{r.epochs:.4f}" if r.unique_tokens else "-") for r in rows],
               title="Per-language weights (tokens include one EOS per document)")
    for stage, subset in dict.fromkeys((r.stage, r.subset) for r in rows):
        click.echo(f"{stage}/{subset}: " + language_coverage([r.language for r in rows
                                                              if (r.stage, r.subset) == (stage, subset)]))


def language_coverage(present) -> str:
    """One phrase: how many of StarCoder's 86 programming languages, the 2 data formats and Apex ``present``
    (language keys) holds, and how many other names (unknown, natural languages)."""
    from xgen_data.attributes import languages

    kinds = [languages.kind(x) for x in set(present)]
    n = {k: kinds.count(k) for k in languages.KINDS}
    other = sum(k is None for k in kinds)
    return (f"{n['starcoder']} of StarCoder's {languages.KINDS['starcoder']} programming languages, "
            f"{n['data']} of {languages.KINDS['data']} data formats (json, yaml), "
            f"{n['extra']} of {languages.KINDS['extra']} extra (apex)" + (f", {other} other" if other else ""))


def print_steps(steps) -> None:
    from cli.filter_cmd import print_filter

    if steps.decisions is not None:
        click.echo(f"Decisions of the {steps.decisions.label}")
    if steps.filter is not None:
        print_filter(steps.filter)
    if steps.dedup is not None:
        from cli.dedup_cmd import print_report

        print_report(steps.dedup)
    if steps.ran:
        click.echo(f"Attributes computed now: {', '.join(steps.ran)}")
    if steps.skipped:
        click.echo(f"Attributes up to date, not re-run: {', '.join(steps.skipped)}\n")


@mix.command()
@corpus_option
@recipe_option
@seed_option
@workers_option
@executor_options
@format_option()
@user_errors
def plan(corpus_dir: str, recipe_name: str, seed: int | None, workers: int, executor: str,
         ray_address: str | None, fmt: str) -> None:
    """Print unique and effective tokens, proportion, epochs and sequences per stage and subset.

    First runs the recipe's filters and dedup on the corpus when they are out of date (as `mix build`
    does), so the plan counts exactly the documents a build would pack.
    """
    from xgen_data.mixing import pipeline

    r = _recipe(recipe_name, seed)
    steps, docs = pipeline.plan_recipe(corpus_dir, r, workers=workers, executor=executor, ray_address=ray_address)
    print_steps(steps)
    print_plan(r, docs, corpus_dir)
    print_step_reports(steps.steps)


@mix.command()
@corpus_option
@recipe_option
@seed_option
@workers_option
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Shards directory to write.")
@executor_options
@format_option()
@user_errors
def build(corpus_dir: str, recipe_name: str, seed: int | None, workers: int, out_dir: str, executor: str,
          ray_address: str | None, fmt: str) -> None:
    """Run the recipe's filters and dedup, then pack shuffled sequences into uint16 shards + manifest.json."""
    from xgen_data.shards import packing

    r = _recipe(recipe_name, seed)
    steps, report = packing.build_recipe(corpus_dir, r, out_dir, workers=workers, executor=executor,
                                         ray_address=ray_address)
    print_steps(steps)
    print_build(r, report)
    print_step_reports(steps.steps + report.steps)


def print_build(recipe, report) -> None:
    """Print sequences per sub-stage and realised token proportions against the recipe's, and where what the
    recipe asks and what was packed differ."""
    from xgen_data.mixing import mixture

    for note in report.notes:
        click.echo(f"note: {note}")
    for line in mixture.packing_notes(recipe):
        click.echo(f"rounding: {line}")
    rows = [(k, v) for k, v in report.sequences.items()]
    print_rows(["stage/substage", "sequences"], rows, title=f"Shards: {report.shards} files in {report.out_dir}")
    rows = []
    for st in recipe.stages:
        got = report.tokens_per_subset.get(st.name, {})
        total = sum(got.values()) or 1
        for subset, p in st.proportions.items():
            rows.append((st.name, subset, got.get(subset, 0), f"{p:.4%}", f"{got.get(subset, 0) / total:.4%}"))
    print_rows(["stage", "subset", "content_tokens", "recipe_proportion", "packed_proportion"], rows,
               title="Tokens per subset against the recipe")
