"""``xgen card``: every number equals the SQL it cites; the Hugging Face metadata; the page; the AI Act draft."""
from __future__ import annotations

import html.parser
import json
import os
import re
import shutil

import pytest
from click.testing import CliRunner

from cli.main import cli
from xgen_data.errors import DamagedDataError, RefusedError
from xgen_data.interop import ai_act, card
from xgen_data.mixing import recipe as recipe_mod
from xgen_data.shards import shard_format
from xgen_data.stats import sql as sqlmod


@pytest.fixture(scope="module")
def made(demo_shards, sample_corpus, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("card") / "card")
    return out, card.write_card(demo_shards, out, corpus_dir=sample_corpus, ai_act_summary=True)


def test_every_number_is_the_query_it_cites(made, demo_shards, sample_corpus):
    out, result = made
    recipe = recipe_mod.load(os.path.join(out, "recipe.toml"))
    con = sqlmod.connect(sample_corpus, shard_dirs=[demo_shards], recipe=recipe, quiet=True)
    sql_facts = [f for f in result["facts"] if f["kind"] == "sql"]
    assert {f["key"] for f in sql_facts} >= {"sources", "funnel", "licenses", "languages", "duplicates", "packed",
                                               "packed_subsets", "checksums", "lengths", "decontamination"}
    for f in sql_facts:
        assert json.loads(json.dumps([list(r) for r in con.execute(f["source"]).fetchall()])) == f["rows"], f["key"]
    con.close()
    shown = open(os.path.join(out, "README.md"), encoding="utf-8").read()
    assert all(f["source"] in shown for f in sql_facts)  # the card prints each query it used


def test_card_numbers_match_the_shards_and_corpus(made, demo_shards, sample_corpus):
    out, result = made
    facts = {f["key"]: f for f in result["facts"]}
    manifest = shard_format.read_manifest(demo_shards)
    per_subset: dict[tuple, int] = {}
    for e in manifest["shards"]:
        for k, v in e["tokens_per_subset"].items():
            per_subset[(e["stage"], k)] = per_subset.get((e["stage"], k), 0) + v
    assert {(s, k): t for s, k, t in facts["packed_subsets"]["rows"]} == per_subset
    packed_tokens = sum(e["n_sequences"] * e["seq_len"] for e in manifest["shards"])
    assert sum(r[-1] for r in facts["packed"]["rows"]) == packed_tokens
    assert {r[0]: r[1] for r in facts["checksums"]["rows"]} == {e["path"]: e["sha256"] for e in manifest["shards"]}
    for stage, subset, plan, tokens, share in facts["plan_vs_packed"]["rows"]:  # packing hits the plan within 1%
        assert tokens == per_subset[(stage, subset)] and share == pytest.approx(plan, abs=0.01)
    # the funnel covers every document of the packed subsets exactly once
    con = sqlmod.connect(sample_corpus, quiet=True)
    n_docs = con.execute("SELECT count(*) FROM documents WHERE subset IN ('code', 'natural')").fetchone()[0]
    con.close()
    assert sum(r[1] for r in facts["funnel"]["rows"]) == n_docs


def test_markdown_metadata_is_a_valid_hf_card(made):
    hub = pytest.importorskip("huggingface_hub")
    out, _ = made
    data = hub.DatasetCard.load(os.path.join(out, "README.md")).data.to_dict()
    assert data["task_categories"] == ["text-generation"]
    assert data["size_categories"][0] in {name for _, name in card.SIZE_CATEGORIES} | {"n>1T"}
    assert data["license"] == "other" or re.fullmatch(r"[a-z0-9.\-+]+", data["license"])
    assert data["language"] and all(re.fullmatch(r"[a-z]{2,3}", code) for code in data["language"])
    text = open(os.path.join(out, "README.md"), encoding="utf-8").read()
    for section in ("## Motivation", "## Composition", "## Collection process", "## Preprocessing", "## Uses",
                    "## Distribution", "## Maintenance"):
        assert section in text


class _Page(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.links, self.svgs, self.tables, self.external = set(), [], [], 0, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "a":
            self.links.append(a.get("href", ""))
        if tag == "svg":
            self.svgs.append((int(a["width"]), int(a["height"])))
        if tag == "table":
            self.tables += 1
        if tag in ("script", "img", "link", "iframe") or any(str(v).startswith(("http:", "https:", "//"))
                                                             for k, v in a.items() if k in ("src", "href")):
            self.external.append(tag)


def test_page_is_self_contained_and_its_links_resolve(made):
    out, result = made
    p = _Page()
    p.feed(open(os.path.join(out, "index.html"), encoding="utf-8").read())
    assert p.external == []
    assert p.links and all(h.startswith("#") and h[1:] in p.ids for h in p.links)
    assert {f["key"] for f in result["facts"]} <= p.ids
    assert len(p.svgs) >= 6 and all(w > 0 and h > 0 for w, h in p.svgs)
    assert p.tables == sum(1 for f in result["facts"] if f["rows"])


def test_ai_act_draft(made):
    out, result = made
    text = open(os.path.join(out, "ai_act_summary.md"), encoding="utf-8").read()
    assert "DRAFT" in text and text.count(ai_act.PROVIDER) >= 10
    for heading in ("## 1. General information", "## 2. List of data sources", "## 3. Data processing aspects",
                    "3.1 Respect of reservation of rights", "3.2 Removal of illegal content"):
        assert heading in text
    facts = {f["key"]: f for f in result["facts"]}
    total = sum(r[-1] for r in facts["packed"]["rows"])
    assert f"{total:,} tokens packed" in text
    for source, tokens in facts["packed_sources"]["rows"]:
        assert f"| {source} | {tokens:,} |" in text
    assert ai_act.size_range(999_999_999) == "less than 1 billion tokens"
    assert ai_act.size_range(10**13) == "more than 10 trillion tokens"


def test_card_without_corpus_says_what_is_missing(demo_shards, tmp_path):
    result = card.write_card(demo_shards, str(tmp_path / "c"), ai_act_summary=True)
    keys = {f["key"] for f in result["facts"]}
    assert keys == {"plan", "packed", "packed_subsets", "packed_sources", "checksums", "plan_vs_packed"}
    assert all(f["kind"] in ("manifest", "derived") for f in result["facts"])
    assert "Not shown without the corpus" in (tmp_path / "c" / "README.md").read_text(encoding="utf-8")
    draft = (tmp_path / "c" / "ai_act_summary.md").read_text(encoding="utf-8")
    assert "## 3. Data processing aspects" in draft and "need the corpus" in draft


def test_card_replaces_its_own_earlier_card_only(demo_shards, tmp_path):
    out = tmp_path / "c"
    card.write_card(demo_shards, str(out), ai_act_summary=True)
    r = CliRunner().invoke(cli, ["card", demo_shards, "--out", str(out)])  # regenerate: the earlier card goes whole
    assert r.exit_code == 0, r.output
    assert sorted(os.listdir(out)) == ["README.md", "card.json", "index.html", "recipe.toml"]
    (out / "notes.txt").write_text("mine")
    r = CliRunner().invoke(cli, ["card", demo_shards, "--out", str(out)])
    assert r.exit_code == 2 and "notes.txt" in r.output and (out / "notes.txt").is_file()
    (out / "notes.txt").unlink()
    (out / "card.json").write_text((out / "card.json").read_text().replace('"corpus": false', '"corpus": true'))
    with pytest.raises(RefusedError, match="not empty and is not an earlier data card"):  # card.json damaged
        card.write_card(demo_shards, str(out))


def test_card_refusals(demo_shards, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("mine")
    with pytest.raises(RefusedError):
        card.write_card(demo_shards, str(tmp_path / "full"))
    copy = str(tmp_path / "shards")
    shutil.copytree(demo_shards, copy)
    entry = shard_format.read_manifest(copy)["shards"][0]
    with open(os.path.join(copy, entry["index_path"]), "ab") as f:
        f.write(b"\0")
    with pytest.raises(DamagedDataError):
        card.write_card(copy, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_cli_export_and_card(demo_shards, sample_corpus, tmp_path):
    runner = CliRunner()
    out = str(tmp_path / "mds")
    r = runner.invoke(cli, ["export", "shards", demo_shards, "--to", "mds", "--out", out])
    assert r.exit_code == 0, r.output
    assert "stage1 blend (samples" in r.output and os.path.isfile(os.path.join(out, "xgen_shards_export.json"))
    r = runner.invoke(cli, ["export", "shards", demo_shards, "--to", "mds", "--out", out])
    assert r.exit_code == 0, r.output  # its own earlier export is replaced
    open(os.path.join(tmp_path, "mds-notes.txt"), "w").close()
    r = runner.invoke(cli, ["export", "shards", demo_shards, "--to", "mds", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "is not an earlier shards export" in r.output, r.output  # other files: refused
    r = runner.invoke(cli, ["export", "shards", sample_corpus, "--to", "mds", "--out", str(tmp_path / "m2")])
    assert r.exit_code == 3 and f"Error: {sample_corpus}: no manifest.json (not a shards directory" in r.output
    missing = str(tmp_path / "no-corpus")
    for target in ("megatron", "mds", "litdata", "hf"):  # a mistyped --corpus is refused for every target
        r = runner.invoke(cli, ["export", "shards", demo_shards, "--to", target, "--corpus", missing, "--out",
                                str(tmp_path / f"x-{target}")])
        assert r.exit_code == 3 and f"{missing}: not an xgen corpus" in r.output, (target, r.output)
        assert not (tmp_path / f"x-{target}").exists()
    hf_out = tmp_path / "hf"
    r = runner.invoke(cli, ["export", "shards", demo_shards, "--to", "hf", "--corpus", sample_corpus,
                            "--out", str(hf_out)])
    assert r.exit_code == 0, r.output
    readme = (hf_out / "README.md").read_text(encoding="utf-8")
    assert "configs:" in readme and "## Composition" in readme and "FROM documents" in readme
    r = runner.invoke(cli, ["card", demo_shards, "--corpus", sample_corpus, "--ai-act", "--out", str(tmp_path / "c"),
                            "--format", "json"])
    assert r.exit_code == 0, r.output
    assert set(json.loads(r.output)["files"]) == {"README.md", "index.html", "ai_act_summary.md", "recipe.toml"}


def test_decontamination_counts(sample_corpus, tmp_path):
    """A document overlapping a planted evaluation item is dropped as eval_overlap; the card counts it."""
    import dataclasses

    import pyarrow.parquet as pq
    from conftest import demo_no_dedup

    from xgen_data.mixing import pipeline
    from xgen_data.shards import packing
    from xgen_data.store.corpus import Corpus

    corpus = str(tmp_path / "corpus")
    shutil.copytree(sample_corpus, corpus)
    docs = pq.read_table(Corpus(corpus).parts("natural")[0].path, columns=["id", "text", "n_tokens"]).to_pylist()
    victim = next(d for d in docs if len(d["text"].split()) > 200)
    evals = tmp_path / "planted.jsonl"
    evals.write_text(json.dumps({"id": "item-1", "question": " ".join(victim["text"].split()[100:125]),
                                 "answer": "x"}) + "\n")
    r = dataclasses.replace(demo_no_dedup(), decontaminate=(str(evals),))
    shards = str(tmp_path / "shards")
    pipeline.apply_recipe_steps(corpus, r, progress=False)
    packing.build(corpus, r, shards, progress=False)
    result = card.write_card(shards, str(tmp_path / "card"), corpus_dir=corpus, ai_act_summary=True)
    facts = {f["key"]: f for f in result["facts"]}
    assert facts["decontamination"]["rows"] == [["planted", 1, victim["n_tokens"]]]
    assert ["eval_overlap", 1, victim["n_tokens"]] in facts["funnel"]["rows"]
    draft = (tmp_path / "card" / "ai_act_summary.md").read_text(encoding="utf-8")
    assert "Documents dropped for overlap with evaluation sets: 1 " in draft
