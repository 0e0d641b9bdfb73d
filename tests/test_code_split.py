"""The demo's stage-2 stand-in: code split into stage-1 `code` and a StarCoder-layout `starcoder` subset;
a recipe's extra identifiers for policy `strict`; license conflicts compared after normalisation."""
import json
import os

import pyarrow.parquet as pq
import pytest

from tests.conftest import shared_path
from xgen_data.mixing import defaults, recipe
from xgen_data.sources import code_split


def _sample():
    return [json.loads(x) for x in open(shared_path("corpus", "sample", "code.jsonl"))]


def test_split_is_disjoint_deterministic_and_per_language(tmp_path):
    recs = _sample()
    rep = code_split.write_split(lambda: iter(recs), str(tmp_path / "a"), seed=7)
    again = code_split.write_split(lambda: iter(recs), str(tmp_path / "b"), seed=7)
    other = code_split.write_split(lambda: iter(recs), str(tmp_path / "c"), seed=8)
    for x, y in zip([rep.code_path, *rep.starcoder_paths], [again.code_path, *again.starcoder_paths]):
        assert open(x, "rb").read() == open(y, "rb").read()  # same records and seed: byte-identical files
    from xgen_data.sources import readers

    code_ids = [json.loads(r.payload)["id"] for r in readers.iter_raw(rep.code_path)]
    star = {os.path.basename(os.path.dirname(p)): pq.read_table(p) for p in rep.starcoder_paths}
    star_ids = [i for t in star.values() for i in t.column("id").to_pylist()]
    assert not set(code_ids) & set(star_ids) and sorted(code_ids + star_ids) == sorted(r["id"] for r in recs)
    # about half of every language on each side; the first file of each language in hash order to starcoder
    langs = {r["id"]: code_split.record_language(r) for r in recs}
    for lang, n in rep.starcoder.items():
        total = sum(1 for v in langs.values() if v == lang)
        assert n == (total + 1) // 2 and rep.code[lang] == total // 2
    assert set(star) == {k for k, v in rep.starcoder.items() if v} and len(star) >= 3
    assert set(other.starcoder) == set(rep.starcoder) and sum(other.starcoder.values()) == sum(rep.starcoder.values())
    assert sorted(i for t in [pq.read_table(p) for p in other.starcoder_paths] for i in t.column("id").to_pylist()) \
        != sorted(star_ids)  # another seed, another split
    # StarCoderData's columns; ingest recognises the layout, takes the language from the folder
    t = star["python"]
    assert t.schema.names == ["id", "content", "max_stars_repo_name", "max_stars_repo_path", "max_stars_count",
                              "max_stars_repo_licenses"]
    row = t.slice(0, 1).to_pylist()[0]
    src = next(r for r in recs if r["id"] == row["id"])
    assert row["content"] == src["text"] and row["max_stars_repo_path"] == src["path"]
    assert row["max_stars_repo_name"] == f"{src['meta']['registry']}/{src['meta']['package']}"
    assert row["max_stars_count"] is None  # the sample has no stars: none invented
    from xgen_data.sources import ingest

    corpus = str(tmp_path / "corpus")
    reports = ingest.ingest(corpus, [(p, None) for p in rep.starcoder_paths], workers=1, progress=False)
    assert {r.subset for r in reports} == {"starcoder"} and sum(r.n_written for r in reports) == len(star_ids)
    from xgen_data.stats import sql

    got = dict(sql.connect(corpus, quiet=True).execute(
        "SELECT language, count(*) FROM documents GROUP BY ALL").fetchall())
    assert got == {k: v for k, v in rep.starcoder.items() if v}


@pytest.mark.parametrize("label,want", [
    ("MIT", ["MIT"]), ("", []), (None, []),
    ("Apache-2.0 AND LicenseRef-BSD-unspecified", ["Apache-2.0", "LicenseRef-BSD-unspecified"]),
    ("GPL-1.0-or-later OR Artistic-1.0-Perl", ["GPL-1.0-or-later OR Artistic-1.0-Perl"]),  # OR stays one item
    ("((GPL-2.0 WITH Linux-syscall-note) OR BSD-3-Clause)", ["((GPL-2.0 WITH Linux-syscall-note) OR BSD-3-Clause)"]),
    ("GPL-2.0 WITH Linux-syscall-note", ["GPL-2.0 WITH Linux-syscall-note"]),
    ('["MIT", "Apache-2.0"]', ["MIT", "Apache-2.0"]),
])
def test_repo_licenses_keep_the_meaning(label, want):
    from xgen_data.attributes import licenses

    got = code_split.repo_licenses(label)
    assert got == want
    if want:  # as a StarCoder license list (all apply) the label decides the same under both policies
        for pol in (licenses.load_policy("permissive"), licenses.load_policy("strict")):
            assert licenses.decide(json.dumps(got), pol)[0] == licenses.decide(label, pol)[0]


def test_every_shared_license_label_maps_to_a_list_with_the_same_decision():
    from xgen_data.attributes import licenses

    labels = {json.loads(line).get("license") for line in code_split.corpus_lines(shared_path("corpus", "code.jsonl.zst"))()}
    assert len(labels) > 50  # the shared code corpus's real, messy labels
    strict = licenses.load_policy("strict")
    for label in labels:
        items = code_split.repo_licenses(label)
        if items:
            assert licenses.decide(json.dumps(items), strict)[0] == licenses.decide(label, strict)[0], label


RECIPE = """name = "x"
[filters]
license_subsets = ["code"]
policy_allow_extra = { strict = ["PSF-2.0"] }
[[stages]]
name = "s"
effective_tokens = { code = 2048, starcoder = 2048 }
licenses = { starcoder = "strict" }
[[stages.substages]]
name = "a"
seq_len = 1024
tokens = 4096
"""


def test_policy_allow_extra(tmp_path):
    p = tmp_path / "r.toml"
    p.write_text(RECIPE)
    r = recipe.load(str(p))
    assert "PSF-2.0" in r.policy("strict").allow and r.policy("strict").labels_must_agree
    assert "PSF-2.0" not in r.allow_list()  # permissive is unchanged (its extras are license_allow_extra)
    q = tmp_path / "again.toml"
    q.write_text(recipe.to_toml(r))
    assert recipe.load(str(q)).policy_allow_extra == {"strict": ("PSF-2.0",)}
    from xgen_data.mixing import decisions

    assert "PSF-2.0" in decisions.from_recipe(r).filter["policies"]["starcoder"]["allow"]
    for bad, match in [("{ permissive = ['PSF-2.0'] }", "license_allow_extra"),
                       ("{ lenient = ['PSF-2.0'] }", "unknown license policy"), ("{ strict = 'PSF-2.0' }", "list")]:
        p.write_text(RECIPE.replace('{ strict = ["PSF-2.0"] }', bad))
        with pytest.raises(recipe.RecipeError, match=match):
            recipe.load(str(p))


def test_license_conflicts_compare_normalized_labels(tmp_path):
    from tests.test_dedup import make_corpus
    from xgen_data.stats import sql

    words = " ".join(f"word{i}" for i in range(80))
    corpus = make_corpus(str(tmp_path), {"code": [
        {"id": "a1", "text": "one " + words, "license": "GPL-2.0"},
        {"id": "a2", "text": "one " + words, "license": "GPL-2.0-only"},  # same license, deprecated id: no conflict
        {"id": "b1", "text": "two " + words, "license": "MIT"},
        {"id": "b2", "text": "two " + words, "license": "Apache-2.0"},  # a real conflict
        {"id": "c1", "text": "three " + words, "license": ""},
        {"id": "c2", "text": "three " + words},  # empty and missing: one label
    ]})
    report = defaults.run_dedup(corpus, near=False, workers=1, progress=False)
    rows = sql.connect(corpus, quiet=True).execute(
        "SELECT id, license, license_normalized, n_labels FROM license_conflicts ORDER BY id").fetchall()
    assert rows == [("b1", "MIT", "MIT", 2), ("b2", "Apache-2.0", "Apache-2.0", 2)]
    assert report.license_conflict_groups == 1
    snap = pq.read_table(report.license_conflicts_path)
    assert snap.column("license").to_pylist() == ["MIT", "Apache-2.0"] and "license_normalized" in snap.schema.names


def test_a_code_half_with_no_record_is_not_an_input(tmp_path):
    """One file per language all goes to starcoder: the empty code.jsonl.zst is left out of the inputs (ingest
    refuses an input that holds no record); with code on both sides, both are ingested."""
    recs = _sample()
    one = [next(r for r in recs if code_split.record_language(r) == "python")]
    rep = code_split.write_split(lambda: iter(one), str(tmp_path / "one"), seed=7)
    assert sum(rep.code.values()) == 0 and os.path.exists(rep.code_path)
    assert rep.ingest_paths() == rep.starcoder_paths
    full = code_split.write_split(lambda: iter(recs), str(tmp_path / "all"), seed=7)
    assert full.ingest_paths() == [full.code_path, *full.starcoder_paths]
