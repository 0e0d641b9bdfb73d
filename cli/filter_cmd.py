"""``xgen filter``: drop short documents and non-permissive code (thin layer over :mod:`xgen_data.attributes.filters`)."""
from __future__ import annotations

import click

from cli.common import corpus_option, executor_options, format_option, print_rows, print_step_reports, user_errors


@click.command("filter")
@corpus_option
@click.option("--recipe", "recipe_name", default=None, help="Take the filter settings from this recipe.")
@click.option("--min-tokens", type=click.IntRange(0), default=None, help="Drop documents with fewer tokens [100].")
@click.option("--license-subset", "license_subsets", multiple=True, help="Subset held to the allow-list [code].")
@click.option("--allow-license", "allow_extra", multiple=True, help="SPDX id to add to the allow-list.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 256),
              help="Processes (or local Ray CPUs) computing the per-part attributes; 1: in this process.")
@executor_options
@format_option()
@user_errors
def filter_(corpus_dir: str, recipe_name: str | None, min_tokens: int | None, license_subsets: tuple[str, ...],
            allow_extra: tuple[str, ...], workers: int, executor: str, ray_address: str | None, fmt: str) -> None:
    """Set the corpus's default length and license filters (SPEC §2) and compute the license attributes.

    The `documents` view without --recipe shows these decisions (for every subset); a recipe's view
    (`xgen sql --recipe R`, `mix plan/build`) uses the recipe's own settings.
    """
    from xgen_data.attributes import filters, licenses
    from xgen_data.mixing import defaults, recipe

    policies = None
    if recipe_name:
        r = recipe.load(recipe_name)
        allow, subsets, mt = r.allow_list(), tuple(r.license_policies()), r.min_tokens
        if not license_subsets and not allow_extra:  # the recipe's policy per subset (e.g. starcoder: strict)
            policies = {s: r.policy(name) for s, name in r.license_policies().items()}
    else:
        allow, subsets, mt = licenses.default_allow_list(), ("code",), filters.MIN_TOKENS
    for bad in licenses.unknown_ids(allow_extra):
        click.echo(click.style(f"warning: --allow-license {bad!r} is not an SPDX license id (nor LicenseRef-*): "
                               "no document's normalised license can match it (a typo?)", fg="yellow"), err=True)
    report = defaults.run_filters(corpus_dir, min_tokens=mt if min_tokens is None else min_tokens,
                                 license_subsets=license_subsets or subsets, allow=tuple(allow) + allow_extra,
                                 policies=policies, workers=workers, executor=executor, ray_address=ray_address)
    print_filter(report)
    print_step_reports(report.steps)


def print_filter(report) -> None:
    rows = [(s, r, n) for (s, r), n in sorted(report.dropped.items())]
    print_rows(["subset", "drop_reason", "documents"], rows, title=f"Filter: {report.n_docs:,} documents checked")
    top = report.dropped_licenses.most_common(8)
    if top:
        print_rows(["subset", "license", "policy's reason", "documents"],
                   [(sub, lic, why, n) for (sub, lic, why), n in top],
                   title="Dropped by the license filter (top 8). A license outside the allow-list: allow it with "
                         "`xgen filter --allow-license` or a recipe's [filters] license_allow_extra; disagreeing "
                         "or missing labels are dropped under any allow-list")
    for subset in report.missing_license_subsets:
        click.echo(click.style(f"warning: license subset {subset!r} is not in the corpus: no license filter "
                               "applies to it (a typo?)", fg="yellow"))
