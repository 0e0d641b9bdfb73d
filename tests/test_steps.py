"""Data steps on the step contract (xgen_data/execute/contract.py): items are independent, so running them in
any order commits the same bytes; a failing item is named; steps report in one shape."""
from __future__ import annotations

import json
import os
import shutil

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import demo_no_dedup

from cli.main import cli
from xgen_data.attributes import decontam as decontam_step
from xgen_data.attributes import filters, language_step, languages
from xgen_data.attributes.dedup import bands as dedup_bands
from xgen_data.attributes.dedup import exact as dedup_exact
from xgen_data.attributes.dedup import run as dedup_run
from xgen_data.attributes.dedup.params import RECIPE_KEYS, resolve_params
from xgen_data.attributes.licenses import license_params
from xgen_data.attributes.part_step import PartAttributeStep, run_part_step
from xgen_data.execute.contract import ItemError, StepReport
from xgen_data.execute.local import LocalExecutor
from xgen_data.mixing import recipe
from xgen_data.shards import pack_step, packing
from xgen_data.store.corpus import Corpus


class ReverseExecutor:
    """Runs the items last to first in this process (results still in item order); records the keys it ran."""

    def __init__(self) -> None:
        self.ran: list[str] = []
        self.steps: dict[str, list[str]] = {}

    def map(self, step_name, fn, items, progress=None):
        done = {}
        for i in reversed(range(len(items))):
            self.ran.append(items[i].key)
            self.steps.setdefault(step_name, []).append(items[i].key)
            done[i] = fn(*items[i].args)
        for i in range(len(items)):
            yield done[i]

    def close(self) -> None:
        pass


def _committed_files(corpus: Corpus, step: str, params: dict) -> dict[str, str]:
    entry = corpus.read_meta()["attributes"][corpus.attribute_key(step, params)]
    return entry["files"]


def _forget(corpus: Corpus, step: str, params: dict) -> None:
    meta = corpus.read_meta()
    del meta["attributes"][corpus.attribute_key(step, params)]
    corpus.write_meta(meta)


@pytest.mark.parametrize("step", ["license", "language", "decontam"])
def test_attribute_items_in_reverse_order_commit_the_same_bytes(corpus_copy, step, tmp_path):
    corpus = Corpus(corpus_copy)
    n_parts = len(corpus.parts())
    assert n_parts > 1
    if step == "decontam":  # an evaluation item planted from a document of the last part
        words = max(pq.read_table(corpus.parts()[-1].path, columns=["text"]).column("text").to_pylist(),
                    key=len).split()
        evals = str(tmp_path / "planted.jsonl")
        with open(evals, "w") as f:
            f.write(json.dumps({"id": "item-1", "question": " ".join(words[:30]), "answer": "x"}) + "\n")
        key = decontam_step.decontam_params([evals])

        def compute(executor):
            return decontam_step.compute_decontam_attributes(corpus, [evals], executor=executor)
    elif step == "license":
        allow, key = ("MIT", "Apache-2.0"), license_params(("MIT", "Apache-2.0"), True)

        def compute(executor):
            return filters.compute_license_attributes(corpus, allow, labels_must_agree=True, executor=executor)
    else:
        key = languages.language_params()

        def compute(executor):
            return language_step.compute_language_attributes(corpus, executor=executor)
    with corpus.lock():
        if corpus.attribute_current(step, key):
            _forget(corpus, step, key)
        assert compute(None)
        forward = _committed_files(corpus, step, key)
        _forget(corpus, step, key)
        rev = ReverseExecutor()
        assert compute(rev)
        assert rev.ran[0] == f"part {corpus.parts()[-1].subset}/{corpus.parts()[-1].name}" and len(rev.ran) == n_parts
        assert _committed_files(corpus, step, key) == forward
        assert len(forward) == n_parts
    if step == "decontam":  # the planted document, and only it, is found
        found = [sum(pq.read_table(path, columns=["contaminated"]).column(0).to_pylist())
                 for _, path in corpus.attribute_files(step, key)]
        assert found == [0] * (n_parts - 1) + [1]


@pytest.mark.parametrize("clustering", ["cliques", "components"])
def test_dedup_items_of_every_phase_in_reverse_order_give_the_same_attributes(corpus_copy, monkeypatch, clustering):
    corpus = Corpus(corpus_copy)
    params = resolve_params(threshold=0.7, clustering=clustering)
    key = {k: getattr(params, k) for k in RECIPE_KEYS}
    first = dedup_run.run_dedup(corpus_copy, workers=1, progress=False, clustering=clustering)
    forward = _committed_files(corpus, "dedup", key)
    work = os.path.join(corpus_copy, "work", "dedup")

    shutil.rmtree(work)  # signatures are a cache: remove it so every item runs again
    # more, smaller items than the defaults: shard counts and grouping must not change the bytes either
    monkeypatch.setattr(dedup_exact, "DOCS_PER_SHARD", 300)
    monkeypatch.setattr(dedup_bands, "BANDS_PER_ITEM", 3)
    monkeypatch.setattr(dedup_bands, "PAIRS_PER_SHARD", 100)
    rev = ReverseExecutor()
    _forget(corpus, "dedup", key)
    again = dedup_run.run_dedup(corpus_copy, workers=1, progress=False, executor=rev, clustering=clustering)
    phases = ["dedup signatures", "dedup exact", "dedup bands"] + (["dedup cluster"] if clustering == "cliques" else [])
    assert list(rev.steps) == phases + ["dedup"]
    for name in phases[1:] + ["dedup"]:
        assert len(rev.steps[name]) > 1, name  # several items, run last to first
    assert rev.steps["dedup"][0].endswith(corpus.parts()[-1].name)
    assert _committed_files(corpus, "dedup", key) == forward
    assert (again.clusters, again.near_edges, again.verified_pairs) == (first.clusters, first.near_edges,
                                                                       first.verified_pairs)
    assert [s.step for s in again.steps] == [s.step for s in first.steps]


def _boom(part_path, out_path, crash_point):
    raise ValueError(f"cannot read {os.path.basename(part_path)}")


def test_a_failing_item_is_named_and_nothing_is_committed(corpus_copy):
    corpus = Corpus(corpus_copy)
    before = corpus.read_meta().get("attributes", {})
    with corpus.lock():
        step = PartAttributeStep("license", _boom, corpus, {"probe": 1})
        with pytest.raises(ItemError, match=r"license: item part \S+/\S+\.parquet failed: cannot read"):
            run_part_step(step, LocalExecutor(workers=1))
    assert corpus.read_meta().get("attributes", {}) == before


def test_steps_report_in_one_shape(corpus_copy):
    corpus = Corpus(corpus_copy)
    with corpus.lock():
        step = PartAttributeStep(languages.LANGUAGE_STEP, language_step.language_part, corpus, {"probe": 2})
        report = run_part_step(step)
    assert isinstance(report, StepReport) and report.step == "language" and not report.errors
    assert report.items == len(corpus.parts())
    assert report.documents == sum(pq.ParquetFile(p.path).metadata.num_rows for p in corpus.parts())
    assert report.bytes > 0 and report.seconds > 0


def _json(args: list[str]) -> dict:
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


STEP_KEYS = {"step", "items", "documents", "bytes", "seconds", "errors"}


def test_filter_dedup_and_mix_build_print_their_step_reports_under_steps(corpus_copy, tmp_path):
    n_parts = len(Corpus(corpus_copy).parts())
    doc = _json(["filter", "--corpus", corpus_copy, "--allow-license", "LicenseRef-probe", "--format", "json"])
    assert [s["step"] for s in doc["steps"]] == ["license"]  # a new allow-list: one new license set
    assert set(doc["steps"][0]) == STEP_KEYS and doc["steps"][0]["items"] == n_parts
    doc = _json(["dedup", "--corpus", corpus_copy, "--workers", "1", "--quiet", "--format", "json"])
    assert [s["step"] for s in doc["steps"]] == ["dedup signatures", "dedup exact", "dedup bands", "dedup cluster",
                                                  "dedup attribute files"]
    assert doc["steps"][-1]["items"] == n_parts and doc["steps"][-1]["documents"] == doc["documents"]
    recipe_path = tmp_path / "recipe.toml"
    recipe_path.write_text(recipe.to_toml(demo_no_dedup()))
    doc = _json(["mix", "build", "--corpus", corpus_copy, "--recipe", str(recipe_path), "--out", str(tmp_path / "S"),
                 "--format", "json"])
    assert doc["steps"][-1]["step"] == "mix build" and set(doc["steps"][-1]) == STEP_KEYS
    manifest = json.load(open(tmp_path / "S" / "manifest.json"))
    tokens = sum(e["seq_len"] * e["n_sequences"] for e in manifest["shards"])
    assert doc["steps"][-1]["bytes"] == 2 * tokens and not doc["steps"][-1]["errors"]


def test_pack_items_in_reverse_order_give_the_same_shards(corpus_copy, demo_shards, tmp_path, monkeypatch):
    monkeypatch.setattr(pack_step, "SHARDS_PER_ITEM", 1)  # one item per shard file: more, smaller items
    rev = ReverseExecutor()
    out = str(tmp_path / "S")
    report = packing.build(corpus_copy, demo_no_dedup(), out, progress=False, executor=rev)
    assert list(rev.steps) == ["mix build tokens", "mix build"]
    assert len(rev.steps["mix build tokens"]) > 1
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    assert len(rev.steps["mix build"]) == len(manifest["shards"]) > 1
    assert rev.steps["mix build"][0].endswith(os.path.basename(manifest["shards"][-1]["path"])[:-len(".bin")])
    assert open(os.path.join(out, "manifest.json")).read() == open(os.path.join(demo_shards, "manifest.json")).read()
    for entry in manifest["shards"]:
        for key in ("path", "index_path"):
            assert open(os.path.join(out, entry[key]), "rb").read() == \
                open(os.path.join(demo_shards, entry[key]), "rb").read()
    assert [s.step for s in report.steps] == ["mix build tokens", "mix build"]
    assert report.steps[1].items == len(manifest["shards"])
