"""docs/cli.md applied to every command: each option has help and a shown default, one meaning per flag name,
and every command that prints results gives one valid JSON document with ``--format json``."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from cli.main import cli

sys.path.insert(0, str(Path(__file__).parent))  # conftest_train
from conftest_train import build_shards  # noqa: E402


def _commands(group: click.Group = cli, path: tuple[str, ...] = ()):
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, path + (name,))
        else:
            yield path + (name,), cmd


COMMANDS = list(_commands())
IDS = [" ".join(p) for p, _ in COMMANDS]


@pytest.mark.parametrize("path, cmd", COMMANDS, ids=IDS)
def test_every_option_has_help_and_a_shown_default(path, cmd):
    res = CliRunner().invoke(cli, [*path, "--help"])
    assert res.exit_code == 0, res.output
    for opt in cmd.params:
        if not isinstance(opt, click.Option) or opt.hidden:
            continue
        name = "/".join(opt.opts)
        assert opt.help, f"xgen {' '.join(path)} {name}: no help"
        assert opt.help.split(".")[0][:30] in " ".join(res.output.split()), f"{name}: help not in --help"
        assert "None]" not in " ".join(res.output.split()), f"xgen {' '.join(path)}: a range or default shown as None"
        given = not opt.is_flag and not opt.multiple and not opt.required and opt.default is not None
        if given:
            named = "default" in opt.help.lower() or re.search(r"\[[^\]]+\]\.?$", opt.help.strip())  # "[print only]"
            assert opt.show_default or named, f"xgen {' '.join(path)} {name}: default not shown"


def test_one_meaning_per_flag_name():
    """docs/cli.md's table: --corpus is the tokenized corpus (never raw files), --quiet silences progress,
    --format is table|json(|csv) defaulting to table; --json and --no-progress are gone."""
    for path, cmd in COMMANDS:
        for opt in cmd.params:
            where = f"xgen {' '.join(path)} {'/'.join(getattr(opt, 'opts', []))}: {opt.help!r}"
            if "--corpus" in getattr(opt, "opts", []):
                assert "corpus" in opt.help.lower() and "jsonl" not in opt.help.lower(), where
            if "--quiet" in getattr(opt, "opts", []):
                assert opt.is_flag and "progress" in opt.help.lower(), where
            assert "--json" not in getattr(opt, "opts", []) and "--no-progress" not in getattr(opt, "opts", [])
            if "--format" in getattr(opt, "opts", []):
                assert opt.default == "table" and "json" in opt.type.choices
    demo = dict(COMMANDS)[("demo",)]
    assert "--corpus" not in [o for p in demo.params for o in p.opts] and any("--sources" in p.opts for p in demo.params)


#: Commands that print results; each takes --format json (tokenizer encode/decode print ids or text as such).
RESULTS = {IDS[i] for i, (p, c) in enumerate(COMMANDS) if p[0] not in ("tokenizer", "demo")}


def test_every_results_command_has_format_json():
    for path, cmd in COMMANDS:
        if " ".join(path) in RESULTS:
            fmt = [p for p in cmd.params if "--format" in getattr(p, "opts", [])]
            assert fmt and "json" in fmt[0].type.choices, f"xgen {' '.join(path)}: no --format json"


def _json(args: list[str]) -> dict | list:
    res = CliRunner().invoke(cli, [*args, "--format", "json"])
    assert res.exit_code == 0, (args, res.output)
    return json.loads(res.stdout)  # exactly one document: json.loads rejects anything after it


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("conv")
    src = folder / "nl.jsonl"
    src.write_text("".join(json.dumps({"id": f"d{i}", "text": f"document number {i} says " * 30}) + "\n"
                           for i in range(6)))
    return folder, src


def test_data_commands_print_one_json_document(tiny, tmp_path):
    folder, src = tiny
    corpus = str(tmp_path / "corpus")
    doc = _json(["ingest", "--corpus", corpus, "--quiet", "--workers", "1", str(src)])
    assert doc["tables"][0]["rows"][0]["written"] == 6
    assert _json(["filter", "--corpus", corpus])["tables"]
    assert _json(["dedup", "--corpus", corpus, "--quiet", "--workers", "1"])["params"]["threshold"] == 0.7
    assert _json(["verify", "--corpus", corpus])["damaged"] == 0
    assert _json(["stats", "--corpus", corpus])["tables"]
    assert _json(["sql", "--corpus", corpus, "SELECT count(*) AS n FROM documents"]) == [{"n": 6}]
    counts = folder / "counts.jsonl"
    counts.write_text('{"task_id": "a", "n": 4, "c": 1}\n')
    assert _json(["eval", "pass-at-k", str(counts), "-k", "1"])["pass_at_k"] == {"1": 0.25}
    assert _json(["carbon", "--device-hours", "1"])["kwh"] == pytest.approx(0.2112)


@pytest.mark.slow  # > 7 s on 2 cores
def test_model_commands_print_one_json_document(tiny, tmp_path):
    folder, src = tiny
    shards = build_shards(tmp_path / "shards", seq_len=64, max_tokens=64 * 16, n_files=1)
    run = str(tmp_path / "run")
    doc = _json(["train", "--shards", str(shards), "--out", run, "--steps", "2", "--batch-size", "2",
                 "--warmup", "1", "--quiet"])
    assert doc["final_step"] == 2 and doc["steps"] == 2
    assert _json(["plot", "loss", run, "--out", str(tmp_path / "fig")])["train_points"] == 2
    hf = str(tmp_path / "hf")
    assert _json(["export", "hf", run, "--out", hf, "--no-tokenizer"])["step"] == 2
    assert _json(["import", "hf", hf, "--out", str(tmp_path / "run2")])["parameters"] > 0
    assert len(_json(["generate", run, "--prompt", "hi", "--max-new-tokens", "2"])["new_ids"]) == 2
    corpus = str(tmp_path / "corpus")
    CliRunner().invoke(cli, ["ingest", "--corpus", corpus, "--quiet", "--workers", "1", str(src)])
    args = ["eval", "ppl-by-position", run, "--corpus", corpus, "--length", "16", "--max-docs", "2",
            "--out", str(tmp_path / "eval")]
    res = CliRunner().invoke(cli, args)  # the run's recipe (its shards') by default: not yet applied to this corpus
    m = re.search(r"`xgen (mix plan [^`]+)`", res.output)
    assert res.exit_code == 3 and m, res.output
    hint = m.group(1).split()
    assert hint[-1] == str(shards), res.output  # --recipe SHARDS: the recipe recorded there
    assert CliRunner().invoke(cli, [*hint, "--workers", "1"]).exit_code == 0  # the hint runs as printed
    doc = _json(args)
    assert doc["documents"] == 2 and doc["tables"][0]["columns"] == ["positions", "mean_nll", "ppl"]
