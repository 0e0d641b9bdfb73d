"""`xgen eval ppl-by-position` on a Hugging Face folder: the same curve as on the run."""
from __future__ import annotations

import csv

import pytest
from click.testing import CliRunner
from hf_helpers import MICRO, make_run, perturbed_params

from cli.main import cli
from xgen_train.export.hf import export_hf


def _rows(folder):
    with open(folder / "ppl_by_position.csv", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow  # > 6 s on 2 cores
def test_ppl_by_position_on_an_hf_folder_equals_the_run(sample_corpus, tmp_path):
    params = perturbed_params(MICRO, seed=2)
    run = make_run(tmp_path / "run", MICRO, params)
    hf = export_hf(run, tmp_path / "hf", tokenizer=False)
    args = ["--corpus", sample_corpus, "--max-docs", "2", "--length", "64", "--quiet"]
    assert CliRunner().invoke(cli, ["eval", "ppl-by-position", str(run), *args]).exit_code == 0
    res = CliRunner().invoke(cli, ["eval", "ppl-by-position", str(hf), *args, "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    ours, theirs = _rows(run / "eval"), _rows(tmp_path / "o")
    assert len(ours) == 63 and [r["position"] for r in ours] == [r["position"] for r in theirs]
    for a, b in zip(ours, theirs):
        assert abs(float(a["mean_nll"]) - float(b["mean_nll"])) <= 2e-6
    res = CliRunner().invoke(cli, ["eval", "ppl-by-position", str(hf), *args])
    assert res.exit_code == 3 and "pass --out DIR" in res.output
