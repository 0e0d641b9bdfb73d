"""The recipe flow (filters then dedup, re-run only when out of date) and how the two steps interact."""
import json

import pytest

from conftest import shared_path
from xgen_data import dedup, filters, ingest, pipeline, recipe, sql


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.fixture()
def gpl_pair(tmp_path):
    """The same real GPL text in `code` (where the license filter drops it) and in `natural` (kept)."""
    with open(shared_path("corpus", "sample", "code.jsonl"), encoding="utf-8") as f:
        rec = next(r for r in map(json.loads, f) if r["license"].startswith("GPL") and len(r["text"]) > 2000)
    root = str(tmp_path / "c")
    ingest.ingest(root, [(_write(tmp_path / "code.jsonl", [{**rec, "id": "a"}]), "code"),
                         (_write(tmp_path / "nl.jsonl", [{**rec, "id": "b"}]), "natural")], workers=1, progress=False)
    return root


def test_dedup_keeps_the_copy_the_filters_keep(gpl_pair):
    filters.run_filters(gpl_pair)
    dedup.run_dedup(gpl_pair, workers=1, progress=False)
    rows = sql.connect(gpl_pair).execute("SELECT subset, id, drop_reason, dup_of FROM documents ORDER BY id").fetchall()
    # "a" has the smaller id, but the license filter drops it: the natural copy must survive.
    assert rows == [("code", "a", "license_not_permissive", "b"), ("natural", "b", None, None)]


def test_without_filter_state_smallest_id_wins(gpl_pair):
    dedup.run_dedup(gpl_pair, workers=1, progress=False)
    rows = sql.connect(gpl_pair).execute("SELECT id, drop_reason, dup_of FROM documents ORDER BY id").fetchall()
    assert rows == [("a", None, None), ("b", "exact_duplicate", "a")]


def test_recipe_steps_run_once_and_follow_the_recipe(corpus_copy, tmp_path):
    r = recipe.load("demo")
    first = pipeline.apply_recipe_steps(corpus_copy, r, workers=1, progress=False)
    # the fixture ran the filters with the SPEC defaults, which are the demo recipe's: up to date
    assert first.filter is None and first.dedup is not None
    again = pipeline.apply_recipe_steps(corpus_copy, r, workers=1, progress=False)
    assert again.filter is None and again.dedup is None and again.skipped == ("filter", "dedup")
    con = sql.connect(corpus_copy)
    n_dups = con.execute("SELECT count(*) FROM documents WHERE drop_reason LIKE '%duplicate'").fetchone()[0]
    assert n_dups > 0
    # Dedup off in the recipe: its old decisions must not linger.
    import dataclasses

    off = dataclasses.replace(r, dedup={"enabled": False})
    pipeline.apply_recipe_steps(corpus_copy, off, workers=1, progress=False)
    con = sql.connect(corpus_copy)
    assert con.execute("SELECT count(*) FROM documents WHERE drop_reason LIKE '%duplicate'").fetchone()[0] == 0
    # A different min_tokens re-runs the filters and then dedup.
    more = dataclasses.replace(r, min_tokens=200)
    rep = pipeline.apply_recipe_steps(corpus_copy, more, workers=1, progress=False)
    assert rep.filter is not None and rep.dedup is not None  # new filter state: dedup re-runs too
    con = sql.connect(corpus_copy)
    assert con.execute("SELECT count(*) FROM documents WHERE kept AND n_tokens < 200").fetchone()[0] == 0
    # A stand-alone filter run with other settings makes the recipe's filter state stale.
    filters.run_filters(corpus_copy, min_tokens=0)
    rep = pipeline.apply_recipe_steps(corpus_copy, r, workers=1, progress=False)
    assert rep.filter is not None and rep.dedup is not None
    again = pipeline.apply_recipe_steps(corpus_copy, r, workers=1, progress=False)
    assert again.skipped == ("filter", "dedup")
    # A stand-alone dedup run with other settings is re-done by the recipe flow, and filters then dedup.
    dedup.run_dedup(corpus_copy, threshold=0.9, workers=1, progress=False)
    assert pipeline.apply_recipe_steps(corpus_copy, r, workers=1, progress=False).skipped == ("filter",)


def test_corpus_lock_is_reentrant(corpus_copy):
    from xgen_data.corpus import Corpus

    c = Corpus(corpus_copy)
    with c.lock():
        with Corpus(corpus_copy).lock():  # nested use within one process must not deadlock
            filters.run_filters(corpus_copy)


def test_demo_refuses_a_run_folder_with_foreign_files(tmp_path):
    from click.testing import CliRunner

    from cli.main import cli

    (tmp_path / "W" / "run").mkdir(parents=True)
    (tmp_path / "W" / "run" / "thesis.txt").write_text("mine")
    res = CliRunner().invoke(cli, ["demo", "--workdir", str(tmp_path / "W")])
    assert res.exit_code == 1 and "did not write" in res.output
    assert (tmp_path / "W" / "run" / "thesis.txt").read_text() == "mine"
