"""`xgen demo` end to end: the embedded corpus (default run) and the full shared corpus (slow)."""
import json
import os
import re

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import shared_path

from xgen_data.mixing import recipe
from xgen_data.shards import shard_format as shards
from xgen_data.stats import sql


def _run_demo(args):
    from cli.main import cli

    res = CliRunner().invoke(cli, ["demo", *args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


def _check_workdir(workdir, output):
    assert "xgen demo summary" in output
    for heading in ("Documents in and out, by drop reason", "Tokens per subset against the recipe", "Training"):
        assert heading in output
    assert shards.verify(os.path.join(workdir, "shards")) == []
    con = sql.connect(os.path.join(workdir, "corpus"))
    n_shards = con.execute("SELECT count(*) FROM shards").fetchone()[0]
    assert n_shards == len(shards.read_manifest(os.path.join(workdir, "shards"))["shards"])
    summary = json.load(open(os.path.join(workdir, "run", "summary.json")))
    assert summary["last_loss_mean10"] < summary["first_loss_mean10"] - 1.0
    assert os.path.exists(os.path.join(workdir, "run", "loss.png"))
    # one run walked every sub-stage of the recipe, in order
    n_sub = sum(len(st["substages"]) for st in shards.read_manifest(os.path.join(workdir, "shards"))["stages"])
    assert len(summary["phases"]) == n_sub and len(summary["switches"]) == n_sub - 1
    assert summary["final_step"] == summary["total_steps"] and "Figure 1:" in output
    # the model is handed over: Figure 2 and a Hugging Face folder that our importer reads back
    assert os.path.exists(os.path.join(workdir, "run", "eval", "ppl_by_position.png")) and "Figure 2" in output
    from xgen_train.export.hf import load_hf
    from xgen_train.loop.checkpoint import load_params

    hf_cfg, hf_params = load_hf(os.path.join(workdir, "hf"))
    run_cfg, run_params = load_params(os.path.join(workdir, "run"))
    assert hf_cfg == run_cfg
    assert all(np.array_equal(hf_params[m][n], run_params[m][n]) for m in run_params for n in run_params[m])


def _check_stage2(workdir, output, min_languages):
    """Stage 2 packs a StarCoder-layout subset of files stage-1 code does not hold, weighted by language."""
    raw = os.path.join(workdir, "raw", "starcoder")
    langs = sorted(os.listdir(raw))
    assert len(langs) >= min_languages and all(
        os.listdir(os.path.join(raw, x)) == ["train-00000-of-00001.parquet"] for x in langs)
    r = recipe.load(os.path.join(workdir, "recipe.toml"))
    assert r.license_policies()["starcoder"] == "strict" and r.stages[1].languages == {"starcoder": "original"}
    con = sql.connect(os.path.join(workdir, "corpus"), recipe=r)
    # disjoint halves: no file (id) is in both subsets (equal contents under two ids are left to dedup)
    assert con.execute("""SELECT count(*) FROM documents c JOIN documents s ON c.id = s.id
        WHERE c.subset = 'code' AND s.subset = 'starcoder'""").fetchone()[0] == 0
    star = con.execute("""SELECT source, language, license_policy, count(*) FROM documents WHERE subset = 'starcoder'
        GROUP BY ALL""").fetchall()
    assert {x[2] for x in star} == {"strict"} and {x[1] for x in star} == set(langs)
    manifest = shards.read_manifest(os.path.join(workdir, "shards"))
    plan = [p for p in manifest["language_plan"] if p["subset"] == "starcoder"]
    assert len(plan) >= min_languages and sum(p["effective_tokens"] for p in plan) == \
        dict(((p["stage"], p["subset"]), p["effective_tokens"]) for p in manifest["plan"])[("stage2", "starcoder")]
    # per-language shares after packing meet the plan within 1% (relative) for every language with >= 1% share
    got = {}
    for e in manifest["shards"]:
        if e["stage"] != "stage2":
            continue
        idx = shards.read_index(os.path.join(workdir, "shards"), e).to_pydict()
        for sub, doc, n in zip(idx["subset"], idx["doc_id"], idx["length"]):
            if sub == "starcoder":
                got[doc] = got.get(doc, 0) + n
    lang_of = dict(con.execute("SELECT id, language FROM documents WHERE subset = 'starcoder'").fetchall())
    per = {}
    for doc, n in got.items():
        per[lang_of[doc]] = per.get(lang_of[doc], 0) + n
    total, want_total = sum(per.values()), sum(p["effective_tokens"] for p in plan)
    for p in plan:
        want = p["effective_tokens"] / want_total
        if want >= 0.01:
            assert abs(per.get(p["language"], 0) / total - want) <= 0.01 * want, (p, per)
    assert "Per-language weights: plan" in output and "packed_share" in output
    assert "stage-2 subset starcoder:" in output and "StarCoderData's layout" in output
    return con


def _printed_hints(output: str) -> list[list[str]]:
    """The commands the demo printed under its "Next, try:" line."""
    import shlex

    from cli.demo_cmd import NEXT_HEADING

    lines = output.split(NEXT_HEADING + "\n", 1)[1].splitlines()
    return [shlex.split(line) for line in lines if line.startswith("  xgen ")]


@pytest.mark.slow  # > 7 s on 2 cores
def test_demo_embedded_corpus(tmp_path):
    from cli.main import cli

    workdir = str(tmp_path / "W1")
    out = _run_demo(["--workdir", workdir, "--steps", "30", "--batch-size", "2"])
    _check_workdir(workdir, out)
    # the number of updates printed is the number trained
    summary = json.load(open(os.path.join(workdir, "run", "summary.json")))
    m = re.search(r"\[5/6\] Train .*?, ([\d,]+) of [\d,]+ updates", out)
    assert m and int(m.group(1).replace(",", "")) == summary["final_step"], out
    # every command the demo suggests runs as printed
    hints = _printed_hints(out)
    assert len(hints) == 6 and all(h[0] == "xgen" for h in hints)
    for args in hints:
        res = CliRunner().invoke(cli, args[1:])
        assert res.exit_code == 0, (args, res.output)
    # the demo ran no stand-alone `xgen filter`: its decisions are its saved recipe's
    con = _check_stage2(workdir, out, min_languages=3)
    subsets = dict(con.execute("SELECT subset, count(*) FILTER (kept) FROM documents GROUP BY ALL").fetchall())
    assert subsets["code"] > 100 and subsets["natural"] > 100 and subsets["starcoder"] > 100
    # PSF-2.0 is on neither SPEC §2 list: allowed for this corpus under both policies, and said so
    assert "PSF-2.0 added to the license allow-list of policy permissive (stage-1 code) and strict (starcoder)" in out
    saved = recipe.load(os.path.join(workdir, "recipe.toml"))
    assert "PSF-2.0" in saved.allow_list() and "PSF-2.0" in saved.policy("strict").allow
    assert "0.00B" not in out and "3.07M" in out  # demo-scale budgets in units that fit
    assert "Dedup (step 2) removed" in out
    # [6/6] instruction tuning: SFT shards, a response-loss curve, one chat exchange, the SFT model's HF folder
    assert "[6/6] Instruction tuning on Q&A from the standard library's docs" in out
    assert "chat: ### Human: What is the Python module json for?" in out
    sft_manifest = json.load(open(os.path.join(workdir, "sft", "manifest.json")))
    assert sft_manifest["format"] == "xgen-sft-shards" and sft_manifest["counts"]["packed"] > 500
    assert os.path.isfile(os.path.join(workdir, "sft-run", "loss.png"))
    assert "### Assistant:" in json.load(open(os.path.join(workdir, "hf-sft", "tokenizer_config.json")))["chat_template"]
    # The saved recipe repeats the demo's choices (PSF-2.0 allowed) for later commands on the workdir.
    res = CliRunner().invoke(cli, ["mix", "build", "--corpus", os.path.join(workdir, "corpus"),
                                   "--recipe", os.path.join(workdir, "recipe.toml"), "--out", str(tmp_path / "S2")])
    assert res.exit_code == 0, res.output
    assert open(tmp_path / "S2" / "manifest.json").read() == open(os.path.join(workdir, "shards", "manifest.json")).read()
    res = CliRunner().invoke(cli, ["mix", "build", "--corpus", os.path.join(workdir, "corpus"), "--recipe", "demo",
                                   "--out", str(tmp_path / "S3")])
    assert res.exit_code == 3 and "licenses dropped: PSF-2.0" in res.output and "license_allow_extra" in res.output
    # Running again reuses the corpus (no duplicated documents) and rebuilds identical shards.
    before = con.execute("SELECT count(*) FROM documents").fetchone()[0]
    first = open(os.path.join(workdir, "shards", "manifest.json")).read()
    out2 = _run_demo(["--workdir", workdir, "--steps", "12", "--batch-size", "1"])
    assert f"was moved to {os.path.join(workdir, 'run')}.prev-1 (nothing deleted)" in out2  # never deleted silently
    assert os.path.exists(os.path.join(workdir, "run.prev-1", "summary.json"))
    assert f"was moved to {os.path.join(workdir, 'hf')}.prev-1 (nothing deleted)" in out2
    assert os.path.exists(os.path.join(workdir, "hf.prev-1", "config.json"))
    assert sql.connect(os.path.join(workdir, "corpus")).execute("SELECT count(*) FROM documents").fetchone()[0] == before
    assert open(os.path.join(workdir, "shards", "manifest.json")).read() == first


@pytest.mark.slow
def test_demo_full_shared_corpus(tmp_path):
    workdir = str(tmp_path / "W2")
    out = _run_demo(["--sources", shared_path("corpus"), "--workdir", workdir, "--steps", "40"])
    _check_workdir(workdir, out)
    # real shared code, split in two: stage 2's starcoder holds every language of the shared code corpus, its
    # packed per-language shares meet the plan within 1%, its real licenses are judged by policy strict
    con = _check_stage2(workdir, out, min_languages=4)
    pol = dict(con.execute("SELECT subset, any_value(license_policy) FROM documents GROUP BY ALL").fetchall())
    assert pol["starcoder"] == "strict" and pol["code"] == "permissive"
    fails = dict(con.execute("""SELECT license_policy, count(*) FROM documents WHERE decision = 'fail'
        GROUP BY ALL""").fetchall())
    assert fails["strict"] > 0 and fails["permissive"] > 0
    reasons = dict(con.execute("SELECT coalesce(drop_reason, 'kept'), count(*) FROM documents GROUP BY ALL").fetchall())
    for r in ("kept", "too_few_tokens", "license_not_permissive", "exact_duplicate", "near_duplicate"):
        assert reasons.get(r, 0) > 0, reasons
    assert sum(reasons.values()) == 110160 + 9383 + 17455  # the split is a partition of the code files
    manifest = shards.read_manifest(os.path.join(workdir, "shards"))
    kept = {(s, i) for s, i in con.execute("SELECT subset, id FROM documents WHERE kept").fetchall()}
    for e in manifest["shards"]:
        idx = shards.read_index(os.path.join(workdir, "shards"), e)
        assert set(zip(idx["subset"].to_pylist(), idx["doc_id"].to_pylist())) <= kept
        data = shards.open_shard(os.path.join(workdir, "shards"), e)
        rows = np.asarray(data)
        assert not np.any((rows[:, 1:] == 50256) & (rows[:, :-1] == 50256)), "EOS doubled inside a sequence"
