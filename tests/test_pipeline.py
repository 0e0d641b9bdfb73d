"""The recipe flow (filters then dedup, re-run only when out of date) and how the two steps interact."""
import json
import re

import pytest
from conftest import demo_code_only, shared_path

from xgen_data.attributes import filters
from xgen_data.mixing import defaults, pipeline, recipe, selection
from xgen_data.sources import ingest
from xgen_data.stats import sql
from xgen_data.store import fsutil


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
    defaults.run_filters(gpl_pair)
    defaults.run_dedup(gpl_pair, workers=1, progress=False)
    rows = sql.connect(gpl_pair).execute("SELECT subset, id, drop_reason, dup_of FROM documents ORDER BY id").fetchall()
    # "a" has the smaller id, but the license filter drops it: the natural copy must survive.
    assert rows == [("code", "a", "license_not_permissive", "b"), ("natural", "b", None, None)]


def test_without_filter_state_smallest_id_wins(gpl_pair):
    defaults.run_dedup(gpl_pair, workers=1, progress=False)
    rows = sql.connect(gpl_pair).execute("SELECT id, drop_reason, dup_of FROM documents ORDER BY id").fetchall()
    assert rows == [("a", None, None), ("b", "exact_duplicate", "a")]


def test_recipe_steps_run_once_and_follow_the_recipe(corpus_copy, tmp_path):
    r = demo_code_only()
    first = pipeline.apply_recipe_steps(corpus_copy, r, workers=1, progress=False)
    # the fixture's `xgen filter` computed the license attributes of the shipped allow-list (the demo's): current
    assert first.ran == ("dedup",) and first.skipped == ("filter",) and first.dedup is not None
    assert first.filter.dropped[("code", filters.REASON_LICENSE)] > 0
    again = pipeline.apply_recipe_steps(corpus_copy, r, workers=1, progress=False)
    assert again.ran == () and again.dedup is None and again.skipped == ("filter", "dedup")
    con = sql.connect(corpus_copy, recipe=r)
    n_dups = con.execute("SELECT count(*) FROM documents WHERE drop_reason LIKE '%duplicate'").fetchone()[0]
    assert n_dups > 0
    # Dedup off in the recipe: no dedup decisions for that recipe, while the demo's stay as they were.
    import dataclasses

    off = dataclasses.replace(r, dedup={"enabled": False})
    assert pipeline.apply_recipe_steps(corpus_copy, off, workers=1, progress=False).ran == ()
    con = sql.connect(corpus_copy, recipe=off)
    assert con.execute("SELECT count(*) FROM documents WHERE drop_reason LIKE '%duplicate'").fetchone()[0] == 0
    con = sql.connect(corpus_copy, recipe=r)
    assert con.execute("SELECT count(*) FROM documents WHERE drop_reason LIKE '%duplicate'").fetchone()[0] == n_dups
    # A different min_tokens is a decision, not an attribute: nothing is recomputed, the kept set follows it.
    more = dataclasses.replace(r, min_tokens=200)
    rep = pipeline.apply_recipe_steps(corpus_copy, more, workers=1, progress=False)
    assert rep.ran == () and rep.skipped == ("filter", "dedup")
    con = sql.connect(corpus_copy, recipe=more)
    assert con.execute("SELECT count(*) FROM documents WHERE kept AND n_tokens < 200 AND subset IN "
                       "('natural', 'code')").fetchone()[0] == 0
    # Stand-alone runs with other settings change only the corpus defaults, never a recipe's state.
    defaults.run_filters(corpus_copy, min_tokens=0)
    defaults.run_dedup(corpus_copy, threshold=0.9, workers=1, progress=False)
    assert pipeline.apply_recipe_steps(corpus_copy, r, workers=1, progress=False).ran == ()
    con = sql.connect(corpus_copy, recipe=r)
    assert con.execute("SELECT count(*) FROM documents WHERE drop_reason LIKE '%duplicate'").fetchone()[0] == n_dups
    # New documents make every attribute set stale: the next flow recomputes them.
    ingest.ingest(corpus_copy, [(_write(tmp_path / "more.jsonl", [{"id": "new", "text": "x " * 300}]), "natural")],
                  workers=1, progress=False)
    with pytest.raises(ValueError, match="out of date"):
        sql.connect(corpus_copy, recipe=r)
    assert pipeline.apply_recipe_steps(corpus_copy, r, workers=1, progress=False).ran == ("filter", "dedup")


def _recipe_file(tmp_path, name, min_tokens=100, extra="", subsets="natural = 0.9531, code = 0.0469"):
    p = tmp_path / f"{name}.toml"
    p.write_text(f"name = '{name}'\nseed = 1\n[filters]\nmin_tokens = {min_tokens}\n{extra}\n"
                 f"[[stages]]\nname = 's1'\nproportions = {{ {subsets} }}\n"
                 "[[stages.substages]]\nname = 'a'\nseq_len = 64\ntokens = 6400\n")
    return recipe.load(str(p))


def test_two_recipes_side_by_side(corpus_copy, tmp_path):
    """Two recipes on one corpus: each has its own kept set, whichever ran last."""
    r100 = _recipe_file(tmp_path, "r100", 100)
    r50 = _recipe_file(tmp_path, "r50", 50, "license_allow_extra = ['PSF-2.0', 'GPL-2.0-only']")
    pipeline.apply_recipe_steps(corpus_copy, r100, workers=1, progress=False)
    pipeline.apply_recipe_steps(corpus_copy, r50, workers=1, progress=False)  # runs last
    q = """SELECT subset, id, kept, drop_reason FROM documents ORDER BY subset, id"""
    a = {(s, i): (k, d) for s, i, k, d in sql.connect(corpus_copy, recipe=r100).execute(q).fetchall()}
    b = {(s, i): (k, d) for s, i, k, d in sql.connect(corpus_copy, recipe=r50).execute(q).fetchall()}
    assert a.keys() == b.keys()
    con = sql.connect(corpus_copy, recipe=r100)
    lengths = dict(((s, i), n) for s, i, n in con.execute("SELECT subset, id, n_tokens FROM documents").fetchall())
    lic = dict(((s, i), x) for s, i, x in con.execute("SELECT subset, id, license FROM documents").fetchall())
    for key, (kept, reason) in a.items():
        if key[0] == "instruct":  # neither recipe packs it: no pre-training rule applies, only dedup
            assert reason in (None, "exact_duplicate", "near_duplicate")
            continue
        if lengths[key] < 100:
            assert reason == "too_few_tokens"
        if 50 <= lengths[key] < 100 and b[key][1] is None:
            assert not kept and b[key][0]  # the r50 recipe keeps what r100 drops for length
    only_50 = [k for k in a if b[k][0] and not a[k][0]]
    short = [k for k in only_50 if 50 <= lengths[k] < 100]
    psf = [k for k in only_50 if k[0] == "code" and lic[k] in ("PSF-2.0", "GPL-2.0-only")]
    assert short and psf
    assert all(b[k][1] != "license_not_permissive" for k in psf)
    # the first recipe's kept set is unchanged by the second run (decisions are derived, not rewritten)
    pipeline.apply_recipe_steps(corpus_copy, r100, workers=1, progress=False)
    again = {(s, i): (k, d) for s, i, k, d in sql.connect(corpus_copy, recipe=r100).execute(q).fetchall()}
    assert again == a
    # packing uses the same derived decisions

    docs = selection.kept_documents(corpus_copy, ["natural", "code"], r50)
    assert {("code", i) for i in docs["code"].doc_id.to_pylist()} == {k for k, v in b.items() if k[0] == "code" and v[0]}


def test_instruct_not_dropped_by_a_recipe_that_does_not_pack_it(corpus_copy, tmp_path):
    r = _recipe_file(tmp_path, "r", 100)
    pipeline.apply_recipe_steps(corpus_copy, r, workers=1, progress=False)
    con = sql.connect(corpus_copy, recipe=r)
    short = con.execute("SELECT count(*) FROM documents WHERE subset = 'instruct' AND n_tokens < 100").fetchone()[0]
    assert short > 100  # most dialogues are short
    assert con.execute("""SELECT count(*) FROM documents WHERE subset = 'instruct'
                          AND drop_reason IN ('too_few_tokens', 'license_not_permissive')""").fetchone()[0] == 0
    # a recipe that packs instruct applies the length rule to it
    ri = _recipe_file(tmp_path, "ri", 100, subsets="natural = 0.5, instruct = 0.5")
    pipeline.apply_recipe_steps(corpus_copy, ri, workers=1, progress=False)
    con = sql.connect(corpus_copy, recipe=ri)
    assert con.execute("""SELECT count(*) FROM documents WHERE subset = 'instruct'
                          AND drop_reason = 'too_few_tokens'""").fetchone()[0] == short


def test_sql_and_stats_say_which_recipe(corpus_copy, tmp_path):
    from click.testing import CliRunner

    from cli.main import cli

    r = _recipe_file(tmp_path, "r50", 50)
    runner = CliRunner()
    res = runner.invoke(cli, ["sql", "--corpus", corpus_copy, "--recipe", r.path, "SELECT count(*) FROM documents"])
    assert res.exit_code == 3 and "xgen mix plan" in res.output  # attributes not computed yet: told what to run
    hint = re.search(r"`xgen (mix plan [^`]+)`", res.output).group(1).split()  # runs as printed
    assert hint[hint.index("--recipe") + 1] == r.path
    res = runner.invoke(cli, [*hint, "--workers", "1"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["sql", "--corpus", corpus_copy, "--recipe", r.path, "--format", "json",
                              "SELECT count(*) FILTER (kept) AS n FROM documents"])
    assert res.exit_code == 0, res.output
    n50 = json.loads(res.stdout)[0]["n"]
    assert "recipe 'r50'" in res.stderr and fsutil.sha256_file(r.path) in res.stderr
    res = runner.invoke(cli, ["sql", "--corpus", corpus_copy, "--format", "json",
                              "SELECT count(*) FILTER (kept) AS n FROM documents"])
    assert json.loads(res.stdout)[0]["n"] < n50 and "corpus defaults" in res.stderr
    res = runner.invoke(cli, ["stats", "--corpus", corpus_copy, "--recipe", r.path])
    assert res.exit_code == 0 and "recipe 'r50'" in res.stderr and "Drops by reason" in res.stdout


def test_corpus_lock_is_reentrant(corpus_copy):
    from xgen_data.store.corpus import Corpus

    c = Corpus(corpus_copy)
    with c.lock():
        with Corpus(corpus_copy).lock():  # nested use within one process must not deadlock
            defaults.run_filters(corpus_copy)


def test_demo_refuses_a_run_folder_with_foreign_files(tmp_path):
    from click.testing import CliRunner

    from cli.main import cli

    (tmp_path / "W" / "run").mkdir(parents=True)
    (tmp_path / "W" / "run" / "thesis.txt").write_text("mine")
    res = CliRunner().invoke(cli, ["demo", "--workdir", str(tmp_path / "W")])
    assert res.exit_code == 2 and "did not write" in res.output
    assert (tmp_path / "W" / "run" / "thesis.txt").read_text() == "mine"


def test_dedup_keep_rule_follows_each_recipe(gpl_pair, tmp_path):
    """One cluster, two recipes: each keeps the copy its own filters keep (clusters are shared attributes)."""
    strict = _recipe_file(tmp_path, "strict", 0, subsets="natural = 0.5, code = 0.5")
    gpl_ok = _recipe_file(tmp_path, "gplok", 0, "license_allow_extra = ['GPL-2.0-only', 'GPL-2.0-or-later', "
                          "'GPL-3.0-only', 'GPL-3.0-or-later', 'GPL-2.0', 'GPL-3.0', 'GPL-2.0+', 'GPL-3.0+']",
                          subsets="natural = 0.5, code = 0.5")
    nl_only = _recipe_file(tmp_path, "nlonly", 0, subsets="natural = 1.0")
    for r in (strict, gpl_ok, nl_only):
        pipeline.apply_recipe_steps(gpl_pair, r, workers=1, progress=False)
    q = "SELECT subset, id, drop_reason, dup_of FROM documents ORDER BY id"
    assert sql.connect(gpl_pair, recipe=strict).execute(q).fetchall() == [
        ("code", "a", "license_not_permissive", "b"), ("natural", "b", None, None)]
    # GPL allowed: both copies pass the filters and rank the same, so the smallest id wins
    assert sql.connect(gpl_pair, recipe=gpl_ok).execute(q).fetchall() == [
        ("code", "a", None, None), ("natural", "b", "exact_duplicate", "a")]
    # a recipe that packs only `natural` keeps the natural copy (code is not filtered there, but not packed)
    assert sql.connect(gpl_pair, recipe=nl_only).execute(q).fetchall() == [
        ("code", "a", "exact_duplicate", "b"), ("natural", "b", None, None)]
    meta = json.load(open(f"{gpl_pair}/corpus.json"))
    assert sum(k.startswith("dedup/") for k in meta["attributes"]) == 1  # one cluster set for all three


def test_stale_defaults_are_said_not_shown(corpus_copy, tmp_path, capsys):
    """After new documents, the old default decisions do not silently describe the new corpus."""
    ingest.ingest(corpus_copy, [(_write(tmp_path / "more.jsonl", [{"id": "n", "text": "y " * 300}]), "natural")],
                  workers=1, progress=False)
    con = sql.connect(corpus_copy)
    assert "out of date" in capsys.readouterr().err
    assert con.execute("SELECT count(*) FROM documents WHERE kept IS NOT NULL").fetchone()[0] == 0
    defaults.run_filters(corpus_copy)  # recomputes the attributes for the new parts
    con = sql.connect(corpus_copy)
    assert con.execute("SELECT kept FROM documents WHERE id = 'n'").fetchone()[0] is True
