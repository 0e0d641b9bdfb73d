"""ROUGE against rouge-score's own scorer, and the CLI (extra ``[eval]``)."""
from __future__ import annotations

import hashlib
import json
import os

import pytest
from click.testing import CliRunner

from cli.main import cli

if os.environ.get("XGEN_REQUIRE_EVAL") == "1":
    from rouge_score import rouge_scorer
else:
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")

PREDS = ["They stopped at noon.\nThe cats were running in the gardens.", "A short summary of the meeting.",
         "Nothing in common here."]
REFS = ["The cat runs in the garden.\nIt stopped at noon and slept.", "Summary: the meeting was short.",
        "Completely different words entirely."]


def test_matches_rouge_score_with_reference_as_target():
    from xgen_train.evaluate.rouge import ROUGE_TYPES, rouge_scores

    mean, rows = rouge_scores(PREDS, REFS)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    for t in ROUGE_TYPES:
        want = [scorer.score(r, p)[t] for p, r in zip(PREDS, REFS)]
        assert mean[t]["f1"] == pytest.approx(100 * sum(w.fmeasure for w in want) / 3)
        assert [row[t]["precision"] for row in rows] == [w.precision for w in want]  # reference is the target
        assert [row[t]["recall"] for row in rows] == [w.recall for w in want]
    # stemming is on: "cats"/"running" match "cat"/"runs"
    assert rows[0]["rouge1"]["f1"] > rouge_scorer.RougeScorer(["rouge1"]).score(REFS[0], PREDS[0])["rouge1"].fmeasure
    assert mean["rougeLsum"]["f1"] != mean["rougeL"]["f1"]  # newlines split sentences for Lsum


def test_cli_rouge(tmp_path):
    p, r = tmp_path / "p.jsonl", tmp_path / "r.jsonl"
    p.write_text("".join(json.dumps({"text": x}) + "\n" for x in PREDS))
    r.write_text("".join(json.dumps(x) + "\n" for x in REFS))
    res = CliRunner().invoke(cli, ["eval", "rouge", "--predictions", str(p), "--references", str(r),
                                   "--format", "json", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    from xgen_train.evaluate.rouge import rouge_scores

    assert json.loads(res.stdout)["rouge2"] == pytest.approx(rouge_scores(PREDS, REFS)[0]["rouge2"]["f1"])
    assert len((tmp_path / "o" / "per_example.jsonl").read_text().splitlines()) == 3
    inputs = json.loads((tmp_path / "o" / "xgen_eval.json").read_text())["inputs"]
    assert inputs == [{"path": str(f), "sha256": hashlib.sha256(f.read_bytes()).hexdigest()} for f in (p, r)]
    r.write_text(json.dumps("only one") + "\n")
    res = CliRunner().invoke(cli, ["eval", "rouge", "--predictions", str(p), "--references", str(r)])
    assert res.exit_code == 3 and "3 predictions but 1 references" in res.output
