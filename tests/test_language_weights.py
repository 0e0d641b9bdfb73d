"""Per-language weights inside a subset (`languages = "original"` or a table): plan and build (SPEC §2 stage 2)."""
import collections
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.conftest import shared_path
from xgen_data.mixing import mixture, pipeline, recipe
from xgen_data.shards import packing

RECIPE = """name = "langs"
seed = 11
[filters]
min_tokens = 100
license_subsets = []
[dedup]
enabled = false
[[stages]]
name = "stage2"
effective_tokens = { starcoder = 40_960 }
languages = { starcoder = "original" }
[[stages.substages]]
name = "s1024"
seq_len = 1024
tokens = 40_960
"""


@pytest.fixture(scope="module")
def starcoder_corpus(tmp_path_factory):
    from xgen_data.sources import ingest

    root = str(tmp_path_factory.mktemp("langs") / "corpus")
    ingest.ingest(root, [(shared_path("corpus", "sample", "code.jsonl"), "starcoder")], workers=1, progress=False)
    return root


def _packed_per_language(out_dir, docs):
    lang_of = dict(zip(docs.doc_id.to_pylist(), docs.language_of(np.arange(len(docs.n_tokens)))))
    manifest = json.load(open(f"{out_dir}/manifest.json"))
    got = collections.Counter()
    for sh in manifest["shards"]:
        idx = pq.read_table(f"{out_dir}/{sh['index_path']}").to_pydict()
        for doc_id, n in zip(idx["doc_id"], idx["length"]):
            got[lang_of[doc_id]] += n
    return got, manifest


@pytest.mark.parametrize("weights", ["original", {"python": 0.5, "perl": 0.3, "c": 0.2}])
def test_build_meets_the_language_plan(starcoder_corpus, tmp_path, weights):
    text = RECIPE if weights == "original" else RECIPE.replace(
        'languages = { starcoder = "original" }',
        "languages = { starcoder = { " + ", ".join(f"{k} = {v}" for k, v in weights.items()) + " } }")
    p = tmp_path / "r.toml"
    p.write_text(text)
    r = recipe.load(str(p))
    assert recipe.load(_roundtrip(r, tmp_path)).stages == r.stages
    steps, docs = pipeline.plan_recipe(starcoder_corpus, r, workers=1, progress=False)
    rows = mixture.language_plan(r, docs)
    assert sum(x.effective_tokens for x in rows) == 40_960
    if weights == "original":
        assert len(rows) >= 4 and abs(sum(x.share for x in rows) - 1) < 1e-9
        for x in rows:  # effective tokens follow the share of unique tokens after filtering
            assert abs(x.effective_tokens - x.share * 40_960) <= 1
    else:
        assert {x.language: x.effective_tokens for x in rows if x.effective_tokens} == \
            {k: round(v * 40_960) for k, v in weights.items()}
    out = str(tmp_path / "shards")
    packing.build_recipe(starcoder_corpus, r, out, workers=1, progress=False)
    got, manifest = _packed_per_language(out, docs["starcoder"])
    assert manifest["language_plan"] and len(manifest["language_plan"]) == len(rows)
    total = sum(got.values())
    for x in rows:
        want = x.effective_tokens / 40_960
        if want >= 0.01:
            assert abs(got[x.language] / total - want) <= 0.01 * want, (x.language, got[x.language] / total, want)
        elif x.effective_tokens == 0:
            assert got[x.language] == 0


def _roundtrip(r, tmp_path):
    q = tmp_path / "again.toml"
    q.write_text(recipe.to_toml(r))
    return str(q)


def test_plan_prints_the_language_table(starcoder_corpus, tmp_path):
    from click.testing import CliRunner

    from cli.main import cli

    p = tmp_path / "r.toml"
    p.write_text(RECIPE)
    res = CliRunner().invoke(cli, ["mix", "plan", "--corpus", starcoder_corpus, "--recipe", str(p), "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert "Per-language weights" in res.output and "python" in res.output and "share" in res.output


def test_language_weight_errors(tmp_path):
    p = tmp_path / "r.toml"
    for bad, match in [('languages = { starcoder = "uniform" }', "original"),
                       ("languages = { starcoder = { python = 0.5 } }", "sum to"),
                       ('languages = { other = "original" }', "not a subset")]:
        p.write_text(RECIPE.replace('languages = { starcoder = "original" }', bad))
        with pytest.raises(recipe.RecipeError, match=match):
            recipe.load(str(p))
    st = recipe.load(_write(tmp_path, RECIPE.replace('"original"', "{ cobol = 1.0 }"))).stages[0]

    with pytest.raises(ValueError, match="cobol"):
        mixture.language_targets(st, "starcoder", 100, {"python": 50})


def _write(tmp_path, text):
    q = tmp_path / "w.toml"
    q.write_text(text)
    return str(q)
