"""One run walks the curriculum (SPEC §2, §4): sub-stage switches, resume bit-identity across a switch,
refused resumes, SIGTERM checkpoints, validation loss, Figure 1 boundaries, --init."""
from __future__ import annotations

import json
import os
import re
import signal
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # conftest_train
from conftest_train import build_curriculum_shards  # noqa: E402

from xgen_data.mixing import recipe as recipe_mod  # noqa: E402
from xgen_train.loop import data as data_mod  # noqa: E402
from xgen_train.loop.checkpoint import CheckpointError, is_hf_folder, latest_checkpoint, load_params  # noqa: E402
from xgen_train.loop.curriculum import make_plan  # noqa: E402
from xgen_train.loop.data import ShardLoader, load_manifest  # noqa: E402
from xgen_train.loop.lossplot import plot_loss, read_metrics  # noqa: E402
from xgen_train.loop.optimizer import learning_rate  # noqa: E402
from xgen_train.loop.trainer import train  # noqa: E402

# s64: 26 sequences, 8 held out -> 18 train -> 4 updates of 4 (2 skipped); s128: 16, 8 held out -> 8 -> 4 of 2.
SUBSTAGES = (("s64", 64, 26, 8), ("s128", 128, 16, 8))
KW = dict(config_name="tiny", batch_tokens=256, lr=3e-3, warmup=2, seed=5, eval_every=2, eval_sequences=4,
          progress=False)


@pytest.fixture(scope="module")
def cshards(tmp_path_factory) -> Path:
    return build_curriculum_shards(tmp_path_factory.mktemp("cur") / "shards", substages=SUBSTAGES)


@pytest.fixture(scope="module")
def full_run(cshards, tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "run"
    return out, train(cshards, out, plot=True, **KW)


def _metrics(run: Path) -> list[dict]:
    return read_metrics(run)


def test_validation_split_in_manifest_and_deterministic(cshards, tmp_path):
    m = load_manifest(cshards)
    subs = m["stages"][0]["substages"]
    assert [(s["name"], s["n_sequences"], s["validation_sequences"]) for s in subs] == [("s64", 26, 8), ("s128", 16, 8)]
    splits = {(e["substage"], e["split"]): e["n_sequences"] for e in m["shards"]}
    assert splits == {("s64", "train"): 18, ("s64", "validation"): 8, ("s128", "train"): 8, ("s128", "validation"): 8}
    val = ShardLoader(cshards, 2, substage="s64", split="validation")
    tr = ShardLoader(cshards, 2, substage="s64")
    assert (val.n_sequences, tr.n_sequences) == (8, 18)
    held = {bytes(r) for r in val.sequences(np.arange(8))}
    assert not held & {bytes(r) for r in tr.sequences(np.arange(18))}  # held-out rows are not trained on
    again = build_curriculum_shards(tmp_path / "again", substages=SUBSTAGES)  # same seed: byte-identical
    assert (again / "manifest.json").read_bytes() == (cshards / "manifest.json").read_bytes()
    for e in m["shards"]:
        assert (again / e["path"]).read_bytes() == (cshards / e["path"]).read_bytes()
    with pytest.raises(ValueError, match="split must be"):
        ShardLoader(cshards, 2, substage="s64", split="test")
    bad = tmp_path / "bad.toml"
    bad.write_text("name='x'\nseed=1\n[[stages]]\nname='a'\nproportions={natural=1.0}\n[[stages.substages]]\n"
                   "name='s'\nseq_len=64\ntokens=640\nheldout_sequences=10\n")
    with pytest.raises(recipe_mod.RecipeError, match="heldout_sequences: 10 leaves no training sequences"):
        recipe_mod.load(str(bad))


def test_plan_batches_and_partial_last_batch(cshards):
    m = load_manifest(cshards)
    plan = make_plan(m, batch_tokens=256)
    got = [(p.name, p.batch_size, p.steps, p.start_step, p.start_tokens, p.skipped_sequences) for p in plan.phases]
    assert got == [
        ("stage1/s64", 4, 4, 0, 0, 2), ("stage1/s128", 2, 4, 4, 1024, 0)]
    assert plan.total_steps == 8 and plan.total_tokens == 2048
    assert plan.position(4).to_dict() == {"step": 4, "phase": 1, "stage": "stage1", "substage": "s128",
                                          "step_in_phase": 0, "tokens_seen": 1024}
    assert plan.position(8).tokens_seen == 2048
    by_seq = make_plan(m, batch_size=5)
    assert [(p.batch_size, p.steps, p.skipped_sequences) for p in by_seq.phases] == [(5, 3, 3), (5, 1, 3)]
    half = make_plan(m, batch_tokens=256, budget_fraction=0.5)  # the whole curriculum at half its budgets
    assert [(p.steps, p.skipped_sequences) for p in half.phases] == [(2, 10), (2, 4)]
    with pytest.raises(ValueError, match="budget_fraction"):
        make_plan(m, batch_tokens=256, budget_fraction=0)
    with pytest.raises(ValueError, match="not a positive multiple of seq_len 128"):
        make_plan(m, batch_tokens=192)
    with pytest.raises(ValueError, match="no sub-stage 'nope'"):
        make_plan(m, batch_tokens=256, substage="nope")
    assert [p.name for p in make_plan(m, batch_tokens=256, substage="s128").phases] == ["stage1/s128"]
    # one pass: the updates of a sub-stage read distinct sequences, the skipped remainder never
    ld = ShardLoader(cshards, 4, substage="s64")
    seen = np.concatenate([ld.batch_indices(KW["seed"], k)[0] for k in range(4)])
    assert len(set(seen.tolist())) == 16


def test_curriculum_switches_carry_state_and_count_tokens(full_run):
    out, s = full_run
    recs = _metrics(out)
    train_recs = [r for r in recs if "event" not in r]
    assert [r["step"] for r in train_recs] == list(range(8))
    assert [r["tokens_seen"] for r in train_recs] == [256 * (i + 1) for i in range(8)]
    assert [r["substage"] for r in train_recs] == ["s64"] * 4 + ["s128"] * 4
    events = [r for r in recs if r.get("event") in ("start", "switch")]
    assert [(e["event"], e["step"], e["tokens_seen"], e["to"]["substage"]) for e in events] == [
        ("start", 0, 0, "s64"), ("switch", 4, 1024, "s128")]
    assert events[1]["optimizer_count"] == 4  # the optimizer state carried over: its step count continues
    assert events[1]["from"] == {"stage": "stage1", "substage": "s64", "seq_len": 64, "batch_size": 4}
    # one schedule over the run: warm-up then a cosine to 10% of the peak at the plan's end
    lrs = [r["lr"] for r in train_recs]
    assert lrs[2] == pytest.approx(3e-3) and all(a >= b for a, b in zip(lrs[2:], lrs[3:]))
    assert s["total_steps"] == s["schedule_steps"] == 8 and s["tokens_seen"] == 2048 and len(s["switches"]) == 1
    assert s["final_step"] == 8 and s["interrupted"] is None
    assert lrs[-1] == pytest.approx(learning_rate(7, 3e-3, 2, 8, 0.1))
    # validation loss every 2 updates, on the current sub-stage's held-out sequences
    vals = [r for r in recs if r.get("event") == "val"]
    assert [(v["step"], v["substage"], v["val_sequences"]) for v in vals] == [
        (1, "s64", 4), (3, "s64", 4), (5, "s128", 4), (7, "s128", 4)]
    assert all(np.isfinite(v["val_loss"]) for v in vals) and s["val_loss"] == vals[-1]["val_loss"]
    assert vals[-1]["val_loss"] < vals[0]["val_loss"]
    assert latest_checkpoint(out / "checkpoints").name == "step_00000008"


def test_plot_marks_every_boundary(full_run, tmp_path):
    out, _ = full_run
    res = plot_loss(_metrics(out), tmp_path / "fig1.png")
    assert [(b.step, b.tokens_seen, b.label) for b in res["boundaries"]] == [
        (0, 0, "stage1/s64 (seq 64)"), (4, 1024, "stage1/s128 (seq 128)")]
    assert res["train_points"] == 8 and res["val_points"] == 4
    assert (tmp_path / "fig1.png").stat().st_size > 5000 and (out / "loss.png").stat().st_size > 5000
    from click.testing import CliRunner

    from cli.main import cli

    r = CliRunner().invoke(cli, ["plot", "loss", str(out), "--out", str(tmp_path / "fig")])
    assert r.exit_code == 0, r.output
    assert "2 sub-stage(s)" in r.output and "stage1/s128 (seq 128)" in r.output and (tmp_path / "fig" / "loss.png").is_file()
    r = CliRunner().invoke(cli, ["plot", "loss", str(tmp_path)])
    assert r.exit_code == 3 and "no metrics.jsonl" in r.output


def test_validation_loss_is_one_line_per_substage(tmp_path):
    import matplotlib.pyplot as plt

    def val(step, substage, loss):
        return {"event": "val", "step": step, "tokens_seen": 100 * step, "stage": "stage1", "substage": substage,
                "val_loss": loss}

    records = [{"step": k, "tokens_seen": 100 * (k + 1), "loss": 5.0 - k / 10} for k in range(8)]
    records += [val(1, "s64", 4.0), val(3, "s64", 3.8), val(5, "s128", 4.4), val(7, "s128", 4.1)]
    drawn = []
    real_plot = plt.Axes.plot

    def spy(ax, *args, **kw):
        lines = real_plot(ax, *args, **kw)
        drawn.append([tuple(line.get_xdata()) for line in lines])
        return lines

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plt.Axes, "plot", spy)
        res = plot_loss(records, tmp_path / "f.png")
    assert res["val_points"] == 4 and res["val_lines"] == 2
    assert [(100, 300)] in drawn and [(500, 700)] in drawn  # never a segment from 300 (s64) to 500 (s128)


@pytest.mark.slow  # > 7 s on 2 cores
def test_sigterm_then_resume_is_bit_identical_across_the_switch(cshards, full_run, tmp_path, monkeypatch):
    out_full, full_summary = full_run
    run = tmp_path / "run"
    real_batch_at = data_mod.ShardLoader.batch_at

    def batch_at(self, seed, step):  # SIGTERM to ourselves while update 2 is being prepared
        if self.seq_len == 64 and step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_batch_at(self, seed, step)

    monkeypatch.setattr(data_mod.ShardLoader, "batch_at", batch_at)
    first = train(cshards, run, plot=False, **KW)
    monkeypatch.setattr(data_mod.ShardLoader, "batch_at", real_batch_at)
    assert first["interrupted"] == "SIGTERM" and first["final_step"] == 3  # the current update finished
    assert latest_checkpoint(run / "checkpoints").name == "step_00000003"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored
    # resume up to exactly the sub-stage boundary (a cap), then past the switch to the end
    mid = train(cshards, run, plot=False, steps=4, resume=True, **KW)
    assert (mid["start_step"], mid["final_step"]) == (3, 4)
    last = train(cshards, run, plot=False, resume=True, checkpoint_every=3, keep_checkpoints=2, **KW)
    assert (last["start_step"], last["final_step"], last["tokens_seen"]) == (4, 8, 2048)
    same = ("first_loss", "first_loss_mean10", "last_loss", "switches")  # the summary covers the whole run
    assert {k: last[k] for k in same} == {k: full_summary[k] for k in same}
    assert [p.name for p in sorted((run / "checkpoints").iterdir())] == ["step_00000006", "step_00000008"]

    def strip(recs):  # everything but wall-clock timings
        drop = {"seconds", "elapsed_seconds", "tokens_per_second"}
        return [{k: v for k, v in r.items() if k not in drop} for r in recs if r.get("event") != "stop"]

    assert strip(_metrics(run)) == strip(_metrics(out_full))  # losses, lr, val losses, switch: bit-identical
    cfg_a, pa = load_params(out_full)
    cfg_b, pb = load_params(run)
    for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
        np.testing.assert_array_equal(x, y)


@pytest.mark.slow  # > 7 s on 2 cores
def test_cli_train_interrupted_after_a_checkpoint_exits_130(cshards, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from cli.main import cli

    real_batch_at = data_mod.ShardLoader.batch_at

    def batch_at(self, seed, step):  # Ctrl-C while update 2 is being prepared
        if self.seq_len == 64 and step == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return real_batch_at(self, seed, step)

    monkeypatch.setattr(data_mod.ShardLoader, "batch_at", batch_at)
    run = tmp_path / "run"
    res = CliRunner().invoke(cli, ["train", "--shards", str(cshards), "--out", str(run), "--config", "tiny",
                                   "--batch-tokens", "256", "--lr", "3e-3", "--warmup", "2", "--seed", "5",
                                   "--quiet"])
    assert res.exit_code == 130, res.output
    assert "stopped by SIGINT at step 3" in res.output and "--resume" in res.output and "Traceback" not in res.output
    assert latest_checkpoint(run / "checkpoints").name == "step_00000003"


@pytest.mark.parametrize("change, messages", [
    (dict(lr=1e-3), ["optimizer.peak_lr: 0.003 -> 0.001"]),
    (dict(warmup=3), ["optimizer.warmup_steps: 2 -> 3"]),
    (dict(total_steps=20), ["optimizer.total_steps: 8 -> 20"]),
    (dict(seed=6), ["seed: 5 -> 6", "init_seed: 5 -> 6"]),
    # a different batch also changes the plan's length, hence the schedule: both are named
    (dict(batch_tokens=512), ["batch.batch_tokens: 256 -> 512", "optimizer.total_steps: 8 -> 4"]),
    (dict(batch_tokens=None, batch_size=4), ["batch.batch_size: None -> 4", "batch.batch_tokens: 256 -> None",
                                             "optimizer.total_steps: 8 -> 6"]),
    (dict(config_name="small"), ["config_name: 'tiny' -> 'small'", "model_config.hidden: 128 -> 256"]),
    (dict(substage="s128"), ["data.substage: None -> 's128'", "optimizer.total_steps: 8 -> 4"]),
    (dict(compute_dtype="bfloat16"), ["compute_dtype: 'float32' -> 'bfloat16'"]),
])
def test_resume_with_different_settings_is_refused(cshards, full_run, change, messages):
    out, _ = full_run
    with pytest.raises(ValueError, match="refusing to resume") as exc:
        train(cshards, out, plot=False, resume=True, **{**KW, **change})
    for m in messages:  # each difference named, old -> new
        assert m in str(exc.value), str(exc.value)
    n_lines = len([line for line in str(exc.value).splitlines() if line.startswith("  ")])
    assert n_lines == (5 if "model_config" in messages[-1] else len(messages))  # tiny vs small: 4 fields differ


@pytest.mark.slow  # > 7 s on 2 cores
def test_resume_on_other_data_or_corrupt_checkpoint_is_refused(cshards, full_run, tmp_path):
    out, _ = full_run
    other = build_curriculum_shards(tmp_path / "other", substages=SUBSTAGES, seed=99)
    with pytest.raises(ValueError, match="refusing to resume") as exc:
        train(other, out, plot=False, resume=True, **KW)
    assert "data.manifest_seed: 1234 -> 99" in str(exc.value)
    assert len(re.findall(r"data.manifest_file_sha256: '[0-9a-f]{64}' -> '[0-9a-f]{64}'", str(exc.value))) == 1
    # a bit flip in the latest checkpoint: a clear error naming the file, never a silent resume
    run = tmp_path / "run"
    train(cshards, run, plot=False, steps=2, **KW)
    ck = latest_checkpoint(run / "checkpoints")
    victim = max((p for p in (ck / "params").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[12345] ^= 1
    victim.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"{victim.name}: sha256 differs"):
        train(cshards, run, plot=False, resume=True, **KW)


@pytest.mark.slow  # > 7 s on 2 cores
def test_init_from_a_run(cshards, full_run, tmp_path):
    out, _ = full_run
    s = train(cshards, tmp_path / "ft", plot=False, steps=1, init=out, **KW)
    run_info = json.loads((tmp_path / "ft" / "run.json").read_text())
    assert run_info["init"] == {"path": str(out.resolve())}
    trained_first = _metrics(out)[1]["loss"]  # a fresh model's first loss is about ln(51200) = 10.8
    assert s["first_loss"] < trained_first - 0.5
    with pytest.raises(ValueError, match="model config differs"):
        train(cshards, tmp_path / "ft2", plot=False, steps=1, init=out, **{**KW, "config_name": "small"})
    assert not is_hf_folder(out)
