"""``xgen dedup``: exact and near-duplicate removal (thin layer over :func:`xgen_data.mixing.defaults.run_dedup`)."""
from __future__ import annotations

import json

import click

from cli.common import (
    corpus_option,
    executor_options,
    format_option,
    number,
    own_json,
    print_rows,
    print_step_reports,
    quiet_option,
    show_progress,
    user_errors,
)


@click.command("dedup")
@corpus_option
@click.option("--threshold", type=number(min=0, max=1, min_open=True, max_open=True), default=0.7, show_default=True,
              help="Jaccard threshold the LSH bands and rows are chosen for (SPEC §2).")
@click.option("--num-perm", type=int, default=256, show_default=True, help="MinHash permutations.")
@click.option("--ngram", type=int, default=5, show_default=True, help="Words per shingle.")
@click.option("--seed", type=int, default=1, show_default=True, help="Permutation seed (datasketch's).")
@click.option("--bands", type=int, default=None, help="LSH bands [chosen for --threshold: 25 at 0.7/256].")
@click.option("--rows", type=int, default=None, help="Rows per band [chosen for --threshold: 10 at 0.7/256].")
@click.option("--scheme", type=click.Choice(["affine32", "affine64", "legacy"]), default="affine32",
              show_default=True, help="datasketch permutation scheme.")
@click.option("--exact/--no-exact", default=True, show_default=True, help="Exact dedup by normalised content hash.")
@click.option("--near/--no-near", default=True, show_default=True, help="Near dedup by MinHash LSH.")
@click.option("--clustering", type=click.Choice(["cliques", "components"]), default="cliques", show_default=True,
              help="cliques: verify candidates on estimated Jaccard, every two members of a cluster within "
                   "--threshold; components: StarCoder's connected components of unverified candidates.")
@click.option("--workers", type=int, default=2, show_default=True, help="Signature processes / DuckDB threads.")
@click.option("--recipe", "recipe_name", default=None,
              help="Take the license allow-list (top tiers of the keep policy) from this recipe [shipped list].")
@format_option()
@quiet_option
@executor_options
@user_errors
@own_json
def dedup(corpus_dir: str, threshold: float, num_perm: int, ngram: int, seed: int, bands: int | None,
          rows: int | None, scheme: str, exact: bool, near: bool, clustering: str, workers: int, recipe_name: str | None,
          fmt: str, quiet: bool, executor: str, ray_address: str | None) -> None:
    """Remove exact and near duplicates across all subsets (StarCoder's MinHash LSH, SPEC §2).

    Writes the dedup attributes (clusters, exact groups) for these parameters and makes them the corpus's
    default dedup decisions (the `documents` view without --recipe); recipes keep their own. Also writes
    reports/license_conflicts.parquet (the `license_conflicts` view).
    """
    from xgen_data.mixing.defaults import run_dedup

    allow = None
    if recipe_name:
        from xgen_data.mixing import recipe

        allow = tuple(recipe.load(recipe_name).allow_list())
    report = run_dedup(corpus_dir, threshold=threshold, num_perm=num_perm, ngram=ngram, seed=seed, bands=bands,
                       rows=rows, exact=exact, near=near, workers=workers, progress=show_progress(quiet),
                       scheme=scheme, license_allow=allow, clustering=clustering, executor=executor,
                       ray_address=ray_address)
    if fmt == "json":
        click.echo(json.dumps(report.to_dict(), indent=1, default=str, ensure_ascii=False))
    else:
        print_report(report)
        print_step_reports(report.steps)


def print_report(report) -> None:
    """Print a :class:`xgen_data.attributes.dedup.params.DedupReport`: summary, removals per subset and source, top clusters."""
    from xgen_data.query import REASON_EXACT, REASON_NEAR

    for line in report.summary_lines()[:4]:
        click.echo(line)
    click.echo("")
    rows = []
    for subset in sorted(report.documents_per_subset):
        r = report.removed_by_subset.get(subset, {})
        ex, ne = r.get(REASON_EXACT, 0), r.get(REASON_NEAR, 0)
        n = report.documents_per_subset[subset]
        rows.append((subset, n, ex, ne, n - ex - ne))
    print_rows(["subset", "documents", "exact_removed", "near_removed", "not_duplicates"], rows,
               title="Removed per subset (over all documents, the filters' drops included)")
    click.echo("In `documents`, a document the filters drop keeps the filter's drop_reason; dedup keeps, in each "
               "cluster, a copy the filters keep whenever there is one.\n")
    if report.removed_by_source:
        print_rows(["subset", "source", "exact_removed", "near_removed"], list(report.removed_by_source),
                   title="Removed per source")
    if report.largest_clusters:
        print_rows(["cluster", "size", "exact", "near", "kept (subset/id)", "kept license", "sources"],
                   [(c.cluster, c.size, c.exact, c.near, f"{c.kept_subset}/{c.kept_id}", c.kept_license, c.sources)
                    for c in report.largest_clusters],
                   title=f"Largest clusters ({len(report.largest_clusters)} of {report.clusters:,})")
    if report.license_conflict_groups:
        click.echo(f"License conflicts: {report.license_conflict_groups:,} exact-duplicate groups with different "
                   f"license labels ({report.license_conflict_documents:,} documents); query the "
                   f"`license_conflicts` view (xgen sql) or {report.license_conflicts_path}\n")
