"""Filters (SPEC §2) and the SQL views over corpus statistics."""
import json
import os

import pytest
from click.testing import CliRunner

from xgen_data.attributes import filters, licenses
from xgen_data.mixing import defaults
from xgen_data.stats import sql
from xgen_data.store.corpus import CorpusError


@pytest.mark.parametrize("expr,ok", [
    ("MIT", True), ("mit", True), ("Apache-2.0", True), ("0BSD", True), ("Unlicense", True), ("CC0-1.0", True),
    ("LicenseRef-public-domain", True), ("ISC", True), ("Artistic-2.0", True),
    ("GPL-2.0-only", False), ("LGPL-2.1-or-later", False), ("MPL-2.0", False), ("EPL-2.0", False),
    ("PSF-2.0", False), ("NOASSERTION", False), ("", False), (None, False), ("LicenseRef-GPL-unversioned", False),
    ("Apache-2.0 OR BSD-2-Clause", True), ("GPL-2.0-or-later OR MPL-2.0", False),
    ("(GPL-2.0 WITH Linux-syscall-note) or BSD-3-Clause", True), ("((GPL-2.0 WITH Linux-syscall-note) OR MIT)", True),
    ("((GPL-2.0 WITH Linux-syscall-note) AND MIT)", False), ("BSD-3-Clause AND PSF-2.0", False),
    ("Apache-2.0 AND LicenseRef-BSD-unspecified", False), ("MIT AND BSD-2-Clause", True), ("(((", False),
])
def test_license_expressions(expr, ok):
    assert licenses.license_passes(expr) is ok


def test_allow_list_is_configuration():
    assert licenses.license_passes("PSF-2.0", licenses.default_allow_list() + ("PSF-2.0",))
    assert not licenses.license_passes("MIT", ("Apache-2.0",))


def test_decide_rules():
    assert filters.decide([99, 100, 500, 500, 500, 50], ["MIT", "MIT", "GPL-3.0", "GPL-3.0", None, None],
                          True).to_pylist() == ["too_few_tokens", None, "license_not_permissive",
                                                "license_not_permissive", "license_not_permissive", "too_few_tokens"]
    assert filters.decide([500], ["GPL-3.0"], False).to_pylist() == [None]


def test_documents_view_has_every_drop_reason(sample_corpus):
    con = sql.connect(sample_corpus)
    cols = [d[0] for d in con.execute("SELECT * FROM documents LIMIT 0").description]
    for c in ("id", "subset", "source", "license", "language", "n_chars", "n_tokens", "kept", "drop_reason",
              "dup_cluster", "dup_of"):
        assert c in cols
    rows = dict(con.execute("SELECT drop_reason, count(*) FROM documents GROUP BY ALL").fetchall())
    assert rows["too_few_tokens"] > 0 and rows["license_not_permissive"] > 0 and rows[None] > 0
    # rule checks against the data itself
    assert con.execute("SELECT count(*) FROM documents WHERE kept AND n_tokens < 100").fetchone()[0] == 0
    bad = con.execute("""SELECT count(*) FROM documents WHERE subset = 'code' AND kept
                         AND license IN ('GPL-2.0-only', 'NOASSERTION', 'PSF-2.0')""").fetchone()[0]
    assert bad == 0
    assert con.execute("SELECT count(*) FROM documents WHERE kept = (drop_reason IS NOT NULL)").fetchone()[0] == 0
    n_chars = con.execute("SELECT n_chars, text FROM documents LIMIT 1").fetchone()
    assert n_chars[0] == len(n_chars[1])


def test_shards_view_matches_manifest(sample_corpus, demo_shards):
    from xgen_data.shards import shard_format as shards

    con = sql.connect(sample_corpus, [demo_shards])
    manifest = shards.read_manifest(demo_shards)
    got = con.execute("SELECT count(*), sum(n_sequences) FROM shards WHERE shard_dir = ?", [demo_shards]).fetchone()
    assert got == (len(manifest["shards"]), sum(e["n_sequences"] for e in manifest["shards"]))
    by_split = dict(con.execute("SELECT split, sum(n_sequences) FROM shards WHERE shard_dir = ? GROUP BY split",
                                [demo_shards]).fetchall())
    want = {}
    for e in manifest["shards"]:
        want[e["split"]] = want.get(e["split"], 0) + e["n_sequences"]
    assert by_split == want and set(want) == {"train", "validation"}


def test_cli_sql_formats_and_errors(sample_corpus, demo_shards):
    from cli.main import cli

    runner = CliRunner()
    q = "SELECT subset, count(*) AS n FROM documents GROUP BY subset ORDER BY subset"
    res = runner.invoke(cli, ["sql", "--corpus", sample_corpus, "--format", "json", q])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == [{"subset": "code", "n": 73}, {"subset": "instruct", "n": 586},
                                      {"subset": "natural", "n": 457}]
    assert "decisions: no recipe: the corpus defaults from the last xgen filter" in res.stderr
    res = runner.invoke(cli, ["sql", "--corpus", sample_corpus, "--format", "csv", q])
    assert res.stdout.splitlines()[:2] == ["subset,n", "code,73"]
    res = runner.invoke(cli, ["sql", "--corpus", sample_corpus, "--shards", demo_shards,
                              "SELECT stage, count(*) FROM shards GROUP BY stage"])
    assert res.exit_code == 0 and "stage1" in res.output
    res = runner.invoke(cli, ["sql", "--corpus", sample_corpus, "SELECT nope FROM documents"])
    assert res.exit_code == 3 and "SQL error" in res.output
    res = runner.invoke(cli, ["stats", "--corpus", sample_corpus])
    assert res.exit_code == 0 and "Drops by reason" in res.output and "too_few_tokens" in res.output
    res = runner.invoke(cli, ["sql", "--corpus", sample_corpus, "  "])
    assert res.exit_code == 2 and "empty query" in res.output


def test_length_histogram_png(sample_corpus, tmp_path):
    from cli.main import cli

    png = tmp_path / "len.png"
    res = CliRunner().invoke(cli, ["stats", "--corpus", sample_corpus, "--plot", str(png)])
    assert res.exit_code == 0, res.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_not_a_corpus(tmp_path):
    with pytest.raises(CorpusError, match="xgen ingest"):
        sql.connect(str(tmp_path))


def test_broken_shards_folder_does_not_block_sql(corpus_copy, tmp_path, capsys):
    from xgen_data.store.corpus import Corpus

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{}")
    Corpus(corpus_copy).register_shard_dir(str(broken))
    con = sql.connect(corpus_copy)
    assert con.execute("SELECT count(*) FROM documents").fetchone()[0] == 1116
    assert "broken/manifest.json skipped" in capsys.readouterr().err


def test_malformed_registry_is_a_clear_error(corpus_copy):
    import os

    path = os.path.join(corpus_copy, "corpus.json")
    meta = json.load(open(path))
    meta["inputs"] = 5
    json.dump(meta, open(path, "w"))
    with pytest.raises(CorpusError, match="registry is malformed"):
        sql.connect(corpus_copy)


@pytest.mark.parametrize("expr,want", [
    ("MIT", (True, "pass: on the allow-list")), (None, (False, "fail: no license")), ("", (False, "fail: no license")),
    ("noassertion", (False, "fail: NOASSERTION")), ("(((", (False, "fail: unparsable (unbalanced parentheses)")),
    ("GPL-2.0-only", (False, "fail: GPL-2.0-only not in allow-list")),
    ("BSD-3-Clause AND PSF-2.0", (False, "fail: PSF-2.0 in AND")),
    ("GPL-2.0-or-later OR MPL-2.0", (False, "fail: no OR branch allowed (GPL-2.0-or-later, MPL-2.0)")),
])
def test_license_decision_reasons(expr, want):
    assert licenses.license_decision(expr) == want
    assert licenses.license_decision(expr)[0] is licenses.license_passes(expr)


def test_license_attributes_have_a_reason_for_every_document(sample_corpus):
    con = sql.connect(sample_corpus)
    rows = con.execute("""SELECT subset, license_pass, license_reason, count(*) FROM documents
                          GROUP BY ALL""").fetchall()
    assert all(r[2] and r[2].startswith("pass" if r[1] else "fail") for r in rows)
    assert con.execute("""SELECT count(*) FROM documents WHERE subset = 'code' AND NOT license_pass
                          AND drop_reason IS DISTINCT FROM 'license_not_permissive'
                          AND drop_reason IS DISTINCT FROM 'too_few_tokens'""").fetchone()[0] == 0


def _many_parts_corpus(root, monkeypatch):
    """The sample slice ingested into parts of 16 documents (dozens of parts), with every attribute set."""
    from conftest import shared_path

    from xgen_data.attributes import language_step
    from xgen_data.sources import ingest
    from xgen_data.store.corpus import Corpus

    monkeypatch.setattr(ingest, "PART_DOCS", 16)
    monkeypatch.setattr(ingest, "BATCH_DOCS", 16)
    ingest.ingest(root, [(shared_path("corpus", "sample", f), None) for f in ("nl.jsonl", "code.jsonl")],
                  workers=1, progress=False)
    defaults.run_filters(root)
    corpus = Corpus(root)
    with corpus.lock():
        language_step.compute_language_attributes(corpus)
    defaults.run_dedup(root, workers=1, progress=False)
    return corpus


def test_documents_view_joins_attributes_by_position(tmp_path, monkeypatch):
    # the view pairs each part's rows with its attribute files' rows by position (no hash table over the
    # corpus); the same columns joined by (subset, id) must agree for every document of every part
    corpus = _many_parts_corpus(str(tmp_path / "corpus"), monkeypatch)
    assert len(corpus.parts()) > 20
    con = sql.connect(corpus.root)
    meta = corpus.read_meta()["attributes"]
    checked = 0
    for step, cols in (("license", ["license_pass", "license_reason", "license_normalized"]),
                       ("dedup", ["dup_cluster", "exact_group"]), ("language", ["language", "language_how"])):
        sets = [v for v in meta.values() if v["step"] == step]
        assert sets, step
        files = [f for _, f in corpus.attribute_files(step, sets[-1]["params"])]
        flist = "[" + ", ".join(repr(f) for f in files) + "]"
        on = " OR ".join(f"a.{c} IS DISTINCT FROM d.{c}" for c in cols)
        bad, n = con.execute(f"""SELECT count(*) FILTER ({on}), count(*) FROM documents d JOIN
            (SELECT *, regexp_extract(filename, '([^/]+)/[^/]+$', 1) AS subset
             FROM read_parquet({flist}, filename=true)) a
            ON a.id = d.id AND a.subset = d.subset""").fetchone()
        total = con.execute("SELECT count(*) FROM documents").fetchone()[0]
        assert n == total and bad == 0, (step, bad, n, total)
        checked += 1
    assert checked == 3
    # a filter on either side of the positional join keeps the pairs together: counts per subset equal the
    # attribute files' own
    import pyarrow.parquet as pq

    lic = [v for v in meta.values() if v["step"] == "license"][-1]["params"]
    dd = [v for v in meta.values() if v["step"] == "dedup"][-1]["params"]
    for subset in ("natural", "code"):
        want_pass = sum(pq.read_table(f).column("license_pass").to_pylist().count(True)
                        for p, f in corpus.attribute_files("license", lic) if p.subset == subset)
        want_dup = sum(pq.read_table(f).column("dup_cluster").null_count for p, f in corpus.attribute_files("dedup", dd)
                       if p.subset == subset)
        got_pass, got_dup = con.execute("""SELECT count(*) FILTER (license_pass), count(*) FILTER (dup_cluster IS NULL)
            FROM documents WHERE subset = ?""", [subset]).fetchone()
        assert (got_pass, got_dup) == (want_pass, want_dup), subset
        assert con.execute("SELECT count(*) FROM documents WHERE license_pass AND subset = ?", [subset]
                           ).fetchone()[0] == want_pass


@pytest.mark.parametrize("tamper", ["reverse", "drop"])
def test_attribute_file_out_of_step_with_its_part_is_damaged(corpus_copy, tamper):
    # rows reordered (or one dropped) and the file's sha256 re-recorded by hand: the checksum alone would
    # pass, but the view pairs rows by position, so the ids are checked against the part's, in order
    import pyarrow.parquet as pq

    from xgen_data.stats.verify import verify_corpus
    from xgen_data.store import fsutil
    from xgen_data.store.corpus import Corpus, DamagedAttributeError

    corpus = Corpus(corpus_copy)
    key, state = next((k, v) for k, v in corpus.read_meta()["attributes"].items() if v["step"] == "license")
    path = next(f for p, f in corpus.attribute_files("license", state["params"])
                if p.subset == "code" and pq.ParquetFile(f).metadata.num_rows > 2)
    rel = os.path.relpath(path, os.path.dirname(os.path.dirname(path)))
    t = pq.read_table(path)
    t = t.take(list(range(t.num_rows))[::-1]) if tamper == "reverse" else t.slice(1)
    pq.write_table(t, path)
    meta = corpus.read_meta()
    meta["attributes"][key]["files"][rel] = fsutil.sha256_file(path)
    corpus.write_meta(meta)
    why = "is out of step with its part" if tamper == "reverse" else "rows but its part"
    bad = [c for c in verify_corpus(corpus_copy) if c.status == "damaged"]
    assert [c.path for c in bad] == [path] and why in bad[0].detail and "delete" in bad[0].detail
    if tamper == "drop":  # every reader checks the row counts (Parquet footers)
        with pytest.raises(DamagedAttributeError, match=why) as err:
            sql.connect(corpus_copy, quiet=True)
        assert path in str(err.value)
        defaults.run_filters(corpus_copy)  # the damaged set is not current: computed again
    else:  # same ids, other order: only xgen verify reads the ids; its advice repairs it
        import shutil

        shutil.rmtree(os.path.dirname(os.path.dirname(path)))
        defaults.run_filters(corpus_copy)
    assert not [c for c in verify_corpus(corpus_copy) if c.status == "damaged"]
    assert sql.connect(corpus_copy, quiet=True).execute("SELECT count(*) FROM documents").fetchone()[0] > 0
