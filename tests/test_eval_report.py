"""`xgen eval report`: Tables 4-7 from output folders, the report's figures labelled as a
reference column, checksums verified."""
from __future__ import annotations

import json

from click.testing import CliRunner

from cli.main import cli
from xgen_train.evaluate.outputs import write_folder


def _tasks_folder(path, shots: int, results: dict) -> str:
    doc = {"results": results, "groups": {}, "n-shot": {k: shots for k in results},
           "n-samples": {k: {"original": 10, "effective": 10} for k in results}}
    return str(write_folder(path, "eval-tasks", {"results.json": json.dumps(doc)}))


def test_report_tables_with_reference_column(tmp_path):
    mmlu5 = _tasks_folder(tmp_path / "m5", 5, {"mmlu": {"acc,none": 0.3125}, "mmlu_stem": {"acc,none": 0.25}})
    zero = _tasks_folder(tmp_path / "z", 0, {"hellaswag": {"acc,none": 0.5, "acc_norm,none": 0.625}})
    he = str(write_folder(tmp_path / "he", "eval-humaneval",
                          {"pass_at_k.json": json.dumps({"pass@1": 0.125, "samples": 8})}))
    res = CliRunner().invoke(cli, ["eval", "report", mmlu5, zero, he, "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    md = (tmp_path / "r" / "report.md").read_text()
    assert "## Table 4: MMLU 5-shot" in md and "## Table 6: zero-shot" in md and "## Table 7: HumanEval" in md
    assert "XGen-7B (report, reference)" in md and "Smoke run" not in md
    assert "| mmlu (weighted average) | acc | 31.25 | 10 |  |  | 36.30 |" in md
    assert "| stem | acc | 25.00 | 10 |  |  |  |" in md
    assert "Table 4: MMLU 5-shot, stem: the report's cell is left blank (no checked source)." in md
    assert "| hellaswag | acc_norm | 62.50 | 10 |  |  |  |" in md and "| hellaswag | acc | 50.00 | 10 |  |  | 74.20 |" in md
    assert "| pass@1 | pass@1 | 12.50 | 8 |  |  | 14.20 |" in md
    rows = json.loads((tmp_path / "r" / "report.json").read_text())
    assert {r["table"] for r in rows} == {"Table 4: MMLU 5-shot", "Table 6: zero-shot", "Table 7: HumanEval"}


def test_report_refuses_changed_or_foreign_folders(tmp_path):
    folder = _tasks_folder(tmp_path / "m", 0, {"mmlu": {"acc,none": 0.5}})
    (tmp_path / "m" / "results.json").write_text(json.dumps({"results": {"mmlu": {"acc,none": 0.9}}}))
    res = CliRunner().invoke(cli, ["eval", "report", folder, "--out", str(tmp_path / "r")])
    assert res.exit_code == 3 and "sha256" in res.output
    (tmp_path / "plain").mkdir()
    res = CliRunner().invoke(cli, ["eval", "report", str(tmp_path / "plain"), "--out", str(tmp_path / "r")])
    assert res.exit_code == 3 and "not an xgen eval output folder" in res.output


def test_group_rows_count_their_subtasks_documents(tmp_path):
    doc = {"results": {"mmlu_anatomy": {"acc,none": 0.5}, "mmlu_virology": {"acc,none": 0.25}},
           "groups": {"mmlu": {"acc,none": 0.4}, "mmlu_stem": {"acc,none": 0.5}},
           "group_subtasks": {"mmlu": ["mmlu_stem", "mmlu_other"], "mmlu_stem": ["mmlu_anatomy"],
                              "mmlu_other": ["mmlu_virology"]},
           "n-shot": {"mmlu_anatomy": 0, "mmlu_virology": 0},
           "n-samples": {"mmlu_anatomy": {"effective": 6}, "mmlu_virology": {"effective": 4}}}
    folder = str(write_folder(tmp_path / "m0", "eval-tasks", {"results.json": json.dumps(doc)}))
    from xgen_train.evaluate.report import collect

    rows = {r["benchmark"]: r for r in collect([folder])}
    assert rows["mmlu (weighted average)"]["n"] == 10 and rows["stem"]["n"] == 6
    assert rows["mmlu (weighted average)"]["table"] == "Table 5: MMLU 0-shot"
    assert rows["mmlu (weighted average)"]["value"] == 40.0 and rows["mmlu (weighted average)"]["xgen_7b_report"] == 32.1


def test_rows_name_the_split_scored_and_flag_arc_off_the_reports_split(tmp_path):
    """The split comes from lm-eval's own ``configs`` (test when the task has one): ARC-challenge on validation
    is flagged as not comparable with the report's test figure; on test it is not."""
    from xgen_train.evaluate.report import collect, to_markdown

    def folder(name, configs):
        doc = {"results": {"arc_challenge": {"acc,none": 0.25, "acc_norm,none": 0.5}}, "n-shot": {"arc_challenge": 0},
               "n-samples": {"arc_challenge": {"effective": 4}}, "configs": {"arc_challenge": configs}}
        return str(write_folder(tmp_path / name, "eval-tasks", {"results.json": json.dumps(doc)}))

    val = folder("v", {"validation_split": "validation", "test_split": None})
    test = folder("t", {"validation_split": "validation", "test_split": "test"})
    assert {r["split"] for r in collect([val])} == {"validation"} and {r["split"] for r in collect([test])} == {"test"}
    md_val, md_test = to_markdown(collect([val])), to_markdown(collect([test]))
    assert "| arc_challenge | acc | 25.00 | 4 | validation |  | 41.20 |" in md_val
    assert "arc_challenge: scored on the validation split; the report's figure is on test" in md_val
    assert "| arc_challenge | acc | 25.00 | 4 | test |  | 41.20 |" in md_test and "not directly comparable" not in md_test


def test_limited_runs_are_flagged_not_comparable(tmp_path):
    """A ``--limit`` smoke run (xgen's ``limit`` field, or lm-eval's own ``config.limit`` in an older folder, or
    HumanEval's ``settings.limit``) gives rows with ``limit`` and a visible not-comparable flag; a full run none."""
    from xgen_train.evaluate.report import collect, to_markdown

    def tasks(name, extra):
        doc = {"results": {"hellaswag": {"acc,none": 0.5}}, "n-shot": {"hellaswag": 0},
               "n-samples": {"hellaswag": {"original": 10042, "effective": 2}}, **extra}
        return str(write_folder(tmp_path / name, "eval-tasks", {"results.json": json.dumps(doc)}))

    ours = tasks("ours", {"limit": 2, "comparable_with_published": False, "config": {"limit": 2}})
    older = tasks("older", {"config": {"limit": 3}})
    full = tasks("full", {"limit": None, "comparable_with_published": True, "config": {"limit": None}})
    he = str(write_folder(tmp_path / "he", "eval-humaneval", {"pass_at_k.json": json.dumps(
        {"pass@1": 0.5, "samples": 6, "problems": 2, "settings": {"limit": 2}})}))
    assert [r["limit"] for r in collect([ours, older, full, he])] == [2, 3, None, 2]
    md = to_markdown(collect([ours, he]))
    assert "| hellaswag | acc | 50.00 | 2 |  | 2 (not comparable) | 74.20 |" in md
    assert "| pass@1 | pass@1 | 50.00 | 6 |  | 2 (not comparable) | 14.20 |" in md
    assert "**Smoke run**" in md and "not comparable with published figures" in md and f"{ours} (limit 2)" in md
    assert "Smoke run" not in to_markdown(collect([full]))
    res = CliRunner().invoke(cli, ["eval", "report", older, "--out", str(tmp_path / "r"), "--format", "json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)[0]["limit"] == 3
    assert json.loads((tmp_path / "r" / "report.json").read_text())[0]["limit"] == 3
