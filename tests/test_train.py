"""Training tests (SPEC §4): schedule, optimizer, loader, manifest checks, checkpoints, the loop and the CLI."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # conftest_train
from conftest_train import EOS_ID, build_shards  # noqa: E402

from xgen_data.errors import InputError  # noqa: E402
from xgen_data.shards import shard_format  # noqa: E402
from xgen_train.loop.checkpoint import (  # noqa: E402
    CheckpointError,
    CheckpointStore,
    latest_checkpoint,
    load_checkpoint,
    load_params,
    make_meta,
    write_sidecar,
)
from xgen_train.loop.data import ShardFormatError, ShardLoader, permute  # noqa: E402
from xgen_train.loop.optimizer import OptimizerConfig, decay_mask, learning_rate, make_optimizer  # noqa: E402
from xgen_train.loop.step import StepOptions, init_monitor, monitor_from_history, spike_update  # noqa: E402
from xgen_train.loop.trainer import SpikeDetector, config_differences, make_train_step, next_token_loss, train  # noqa: E402
from xgen_train.model.config import CONFIGS  # noqa: E402
from xgen_train.model.model import build_model, init_params  # noqa: E402


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """~400k real GPT-2 tokens of shared nl sample text, seq_len 128, two shard files."""
    return build_shards(tmp_path_factory.mktemp("shards") / "s128", seq_len=128, n_files=2)


@pytest.fixture()
def small_shards(tmp_path) -> Path:
    """A small copy to break in validation tests (3 files)."""
    return build_shards(tmp_path / "small", seq_len=64, n_files=3, max_tokens=20_000)


# ------------------------------------------------------------------------------------------------ schedule


def test_learning_rate_warmup_cosine_floor():
    kw = dict(peak_lr=3e-4, warmup_steps=2000, total_steps=12000, final_lr_ratio=0.1)
    assert learning_rate(0, **kw) == 0.0
    assert learning_rate(1000, **kw) == pytest.approx(1.5e-4)
    assert learning_rate(2000, **kw) == pytest.approx(3e-4)  # end of warm-up: the peak
    assert learning_rate(7000, **kw) == pytest.approx(0.55 * 3e-4)  # cosine midpoint: (peak + floor) / 2
    assert learning_rate(12000, **kw) == pytest.approx(3e-5)  # end: 10% of the peak
    assert learning_rate(50000, **kw) == pytest.approx(3e-5)
    steps = np.arange(0, 13000, 250)
    lrs = np.array([learning_rate(int(s), **kw) for s in steps])
    assert np.all(np.diff(lrs[steps <= 2000]) > 0) and np.all(np.diff(lrs[steps >= 2000]) <= 0)
    # traceable version agrees, and so does optax's reference schedule
    np.testing.assert_allclose(np.asarray(learning_rate(jnp.asarray(steps), **kw)), lrs, rtol=1e-5, atol=1e-12)
    ref = optax.warmup_cosine_decay_schedule(0.0, 3e-4, 2000, 12000, end_value=3e-5)
    np.testing.assert_allclose(np.asarray(ref(steps)), lrs, rtol=1e-4, atol=1e-10)


def test_optimizer_config_rejects_bad_values():
    with pytest.raises(ValueError, match="warmup"):
        OptimizerConfig(warmup_steps=300, total_steps=200)
    with pytest.raises(ValueError):
        OptimizerConfig(peak_lr=0)


def test_adamw_clip_and_decay_mask_match_hand_formula():
    params = {"lin": {"weight": jnp.full((2, 3), 2.0)}, "norm": {"weight": jnp.full((3,), 2.0)}}
    grads = {"lin": {"weight": jnp.arange(6.0).reshape(2, 3) * 10}, "norm": {"weight": jnp.array([30.0, -40.0, 0.0])}}
    assert decay_mask(params) == {"lin": {"weight": True}, "norm": {"weight": False}}
    cfg = OptimizerConfig(peak_lr=0.1, warmup_steps=0, total_steps=10, weight_decay=0.1, clip_norm=1.0)
    opt = make_optimizer(cfg)
    updates, _ = opt.update(grads, opt.init(params), params)
    gnorm = float(optax.tree.norm(grads))
    assert gnorm > 1.0
    # first Adam step: m_hat = g, v_hat = g^2 (bias-corrected), for clipped g
    for mod, decay in (("lin", True), ("norm", False)):
        g = np.asarray(grads[mod]["weight"]) / gnorm
        adam = g / (np.abs(g) + cfg.eps)
        expected = -0.1 * (adam + (0.1 * 2.0 if decay else 0.0))
        np.testing.assert_allclose(np.asarray(updates[mod]["weight"]), expected, rtol=1e-5, atol=1e-7)


def test_spike_detector():
    rng = np.random.default_rng(0)
    det = SpikeDetector(window=128, n_std=6.0, min_history=16)
    flags = [det.update(3.0 + 0.01 * x) for x in rng.standard_normal(200)]
    assert not any(flags)
    assert det.update(3.5)  # 50 std above the window
    assert not det.update(3.0)
    falling = SpikeDetector()
    assert not any(falling.update(10 * math.exp(-s / 30) + 0.05 * rng.standard_normal()) for s in range(300))
    assert not SpikeDetector().update(float("nan"))


def test_device_spike_rule_matches_host_detector():
    """The jit'ed monitor of the train step flags exactly the steps the host-side SpikeDetector flags."""
    rng = np.random.default_rng(1)
    opts = StepOptions(spike_window=32, spike_std=3.0, spike_min_history=8)
    losses = list(3.0 + 0.05 * rng.standard_normal(120))
    losses[40], losses[90], losses[60] = 4.0, 3.6, float("nan")
    det = SpikeDetector(window=32, n_std=3.0, min_history=8)
    upd = jax.jit(lambda m, x: spike_update(m, x, opts))
    mon = init_monitor(opts)
    host, dev = [], []
    for x in losses:
        host.append(det.update(x))
        flag, mon = upd(mon, jnp.float32(x))
        dev.append(bool(flag))
    assert dev == host and host[40] and host[90] and not host[60]
    replay = monitor_from_history(losses, opts)
    assert int(replay["count"]) == 119 and np.allclose(np.asarray(replay["losses"]), np.asarray(mon["losses"]))


def test_next_token_loss_is_shifted_cross_entropy():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 5, 7)).astype(np.float32)
    tokens = rng.integers(0, 7, size=(2, 5)).astype(np.int32)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ref = -np.mean([logp[b, t, tokens[b, t + 1]] for b in range(2) for t in range(4)])
    assert float(next_token_loss(jnp.asarray(logits), jnp.asarray(tokens))) == pytest.approx(ref, rel=1e-5)
    # uniform logits over V give ln V
    assert float(next_token_loss(jnp.zeros((1, 4, 51200)), jnp.zeros((1, 4), jnp.int32))) == pytest.approx(
        math.log(51200), rel=1e-6)


# ------------------------------------------------------------------------------------------------ loader


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 1000, 3149])
def test_permute_is_a_bijection(n):
    p = permute(5, 2, np.arange(n), n)
    assert sorted(p.tolist()) == list(range(n))
    np.testing.assert_array_equal(p, permute(5, 2, np.arange(n), n))
    if n >= 64:
        assert not np.array_equal(p, permute(5, 3, np.arange(n), n))
        assert not np.array_equal(p, permute(6, 2, np.arange(n), n))
        assert not np.array_equal(p, np.arange(n))


def test_loader_batches_are_a_pure_function_of_seed_and_step(shards):
    a = ShardLoader(shards, batch_size=8)
    assert (a.stage, a.substage, a.seq_len, len(a.files)) == ("stage1", "s1", 128, 2)
    b = ShardLoader(shards, batch_size=8, stage="stage1", substage="s1")
    for _ in range(3):
        a.batch_at(0, 7)  # history does not matter
    x, y = a.batch_at(0, 5), b.batch_at(0, 5)
    assert x["tokens"].dtype == np.int32 and x["tokens"].shape == (8, 128)
    np.testing.assert_array_equal(x["tokens"], y["tokens"])
    np.testing.assert_array_equal(x["inputs"], x["tokens"][:, :-1])
    np.testing.assert_array_equal(x["targets"], x["tokens"][:, 1:])
    assert not np.array_equal(x["tokens"], a.batch_at(0, 6)["tokens"])
    assert not np.array_equal(x["tokens"], a.batch_at(1, 5)["tokens"])
    # rows are exactly the file rows (global index = concatenation of shard files)
    files = [np.fromfile(f.path, dtype="<u2").reshape(-1, 128) for f in a.files]
    allrows = np.concatenate(files)
    np.testing.assert_array_equal(x["tokens"], allrows[x["indices"]].astype(np.int32))
    assert (allrows == EOS_ID).any() and allrows.max() < 50313


def test_loader_epochs_cover_every_sequence_once(small_shards):
    ld = ShardLoader(small_shards, batch_size=7)
    n = ld.n_sequences
    steps_per_epoch = math.ceil(n / 7)
    idx, ep = zip(*(ld.batch_indices(3, s) for s in range(2 * steps_per_epoch + 1)))
    idx, ep = np.concatenate(idx), np.concatenate(ep)
    np.testing.assert_array_equal(ep, np.arange(len(ep)) // n)
    assert sorted(idx[:n].tolist()) == list(range(n))
    assert sorted(idx[n:2 * n].tolist()) == list(range(n))
    assert not np.array_equal(idx[:n], idx[n:2 * n])  # a fresh order every epoch
    assert ld.epoch_of(steps_per_epoch) >= 1.0


def _edit_manifest(root: Path, fn) -> None:
    """Change the manifest and re-stamp its manifest_sha256, so the loader's own checks are what fails."""
    path = root / "manifest.json"
    m = json.loads(path.read_text())
    fn(m)
    shard_format.write_manifest(str(root), m)


@pytest.mark.parametrize("mutate, match, names_file", [
    (lambda m: m.update(format="other"), "format must be 'xgen-shards'", "manifest.json"),
    (lambda m: m.update(format_version=2), "unsupported format_version 2", "manifest.json"),
    (lambda m: m.update(dtype="uint32"), "dtype must be 'uint16'", "manifest.json"),
    (lambda m: m["shards"][1].update(n_sequences=m["shards"][1]["n_sequences"] + 1), "size", "shard-00001.bin"),
    (lambda m: m["shards"][0].update(path="stage1/s1/missing.bin"), "missing", "missing.bin"),
    (lambda m: m["shards"][2].update(seq_len=32), "seq_len 32 differs", "shard-00002.bin"),
    (lambda m: m["stages"][0]["substages"][0].update(n_sequences=1), "n_sequences - validation_sequences = 1 != sum",
     "manifest.json"),
    (lambda m: m["shards"][0].update(path="../../etc/passwd"), "leaves the shards directory", "passwd"),
])
def test_manifest_validation_errors_name_the_file(small_shards, mutate, match, names_file):
    _edit_manifest(small_shards, mutate)
    with pytest.raises(ShardFormatError, match=match) as err:
        ShardLoader(small_shards, batch_size=2)
    assert names_file in str(err.value)


def test_stage_selection_and_file_checks(small_shards, tmp_path):
    with pytest.raises(ShardFormatError, match="no stage 'stage2'; available: stage1"):
        ShardLoader(small_shards, batch_size=2, stage="stage2")
    with pytest.raises(ShardFormatError, match="not a directory"):
        ShardLoader(tmp_path / "nowhere", batch_size=2)
    with pytest.raises(ShardFormatError, match="no manifest.json"):
        ShardLoader(tmp_path, batch_size=2)
    # two sub-stages: the choice is required
    _edit_manifest(small_shards, lambda m: m["stages"][0]["substages"].append(
        {"name": "s2", "seq_len": 64, "n_sequences": 0, "n_tokens": 0}))
    with pytest.raises(ShardFormatError, match="2 substages .*choose one with --substage"):
        ShardLoader(small_shards, batch_size=2)
    assert ShardLoader(small_shards, batch_size=2, substage="s1").substage == "s1"
    # a truncated file
    f = small_shards / "stage1/s1/shard-00001.bin"
    f.write_bytes(f.read_bytes()[:-2])
    with pytest.raises(ShardFormatError, match="shard-00001.bin: size"):
        ShardLoader(small_shards, batch_size=2, substage="s1")


def test_verify_checks_sha256(small_shards):
    ShardLoader(small_shards, batch_size=2, verify=True)
    f = small_shards / "stage1/s1/shard-00002.bin"
    data = bytearray(f.read_bytes())
    data[10] ^= 1  # same size, different content
    f.write_bytes(bytes(data))
    ShardLoader(small_shards, batch_size=2)  # sizes alone still pass
    with pytest.raises(ShardFormatError, match="shard-00002.bin: sha256 mismatch"):
        ShardLoader(small_shards, batch_size=2, verify=True)


# ------------------------------------------------------------------------------------------------ checkpoint


@pytest.mark.slow  # > 7 s on 2 cores
def test_checkpoint_round_trip_is_bit_exact(tmp_path):
    cfg = CONFIGS["tiny"]
    params = init_params(cfg, 0)
    opt = make_optimizer(OptimizerConfig(peak_lr=1e-3, warmup_steps=1, total_steps=10))
    opt_state = opt.init(params)
    step_fn = make_train_step(build_model(cfg), opt)
    monitor = init_monitor(StepOptions())
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 50313, (2, 16)), jnp.int32)
    for _ in range(2):  # non-trivial moments and counts
        params, opt_state, monitor, _ = step_fn(params, opt_state, monitor, tokens)
    meta = make_meta(2, {"step": 2}, {"model_config": cfg.to_dict(), "seed": 7}, extra={"note": "x"})
    with CheckpointStore(tmp_path / "ck", keep=2) as store:
        d = store.save(2, params, opt_state, meta)
        for step in (3, 4):
            store.save(step, params, opt_state, make_meta(step, {}, meta["run"]))
    assert [p.name for p in sorted((tmp_path / "ck").iterdir())] == ["step_00000003", "step_00000004"]  # keep 2
    assert not d.exists()
    d = tmp_path / "ck" / "step_00000004"
    assert {"params", "opt_state", "meta", "xgen-sha256.json", "commit_success.txt"} <= {p.name for p in d.iterdir()}
    ck = load_checkpoint(d, opt_state_template=jax.eval_shape(lambda: opt.init(params)))
    assert (ck.step, ck.model_config, ck.meta["run"]["seed"]) == (4, cfg, 7)
    for orig, new in ((params, ck.params), (opt_state, ck.opt_state)):
        assert jax.tree.structure(orig) == jax.tree.structure(new)
        for a, b in zip(jax.tree.leaves(orig), jax.tree.leaves(new)):
            assert np.asarray(a).dtype == np.asarray(b).dtype and np.array_equal(np.asarray(a), np.asarray(b))
    got_cfg, got = load_params(tmp_path / "ck")  # a folder of checkpoints, or the checkpoint itself
    assert got_cfg == cfg and set(got) == set(params) and isinstance(got["lm_head"]["weight"], np.ndarray)
    assert latest_checkpoint(tmp_path / "ck") == d
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(d, opt_state_template=optax.sgd(0.1, momentum=0.9).init(params))
    other = make_optimizer(OptimizerConfig(peak_lr=1e-3, warmup_steps=1, total_steps=10, clip_norm=0))
    load_checkpoint(d, opt_state_template=other.init(params))  # same structure without clipping


def test_corrupt_checkpoints_are_refused_naming_the_file(tmp_path):
    cfg = CONFIGS["tiny"]
    params = init_params(cfg, 0)
    opt_state = make_optimizer(OptimizerConfig(peak_lr=1e-3, warmup_steps=1, total_steps=10)).init(params)
    run = {"model_config": cfg.to_dict()}
    with CheckpointStore(tmp_path / "ck") as store:
        d = store.save(1, params, opt_state, make_meta(1, {}, run))
    load_params(d)
    meta_file = d / "meta" / "metadata"  # an incompatible (other format version) but intact checkpoint
    good_meta = meta_file.read_text()
    meta_file.write_text(good_meta.replace('"format_version": 2', '"format_version": 3'))
    write_sidecar(d, 1)
    with pytest.raises(CheckpointError, match="metadata: expected xgen-checkpoint v2"):
        load_params(d)
    meta_file.write_text(good_meta)
    write_sidecar(d, 1)
    biggest = max((p for p in d.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(biggest.read_bytes())
    data[len(data) // 2] ^= 0x10  # one flipped bit, same size
    biggest.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"{biggest.name}: sha256 differs"):
        load_params(d)
    biggest.write_bytes(bytes(data[:-100]))  # truncated
    with pytest.raises(CheckpointError, match=f"{biggest.name}: .* bytes.*truncated"):
        load_params(tmp_path / "ck" / "step_00000001")
    (d / "xgen-sha256.json").unlink()  # a save interrupted before the sidecar: never loaded
    with pytest.raises(CheckpointError, match="xgen-sha256.json: missing"):
        load_params(d)
    assert latest_checkpoint(tmp_path / "ck") is None
    with pytest.raises(CheckpointError, match="no run directory|neither"):
        load_params(tmp_path / "ck")


# ------------------------------------------------------------------------------------------------ training


@pytest.mark.slow  # > 7 s on 2 cores
def test_loss_falls_on_real_text(shards, tmp_path):
    s = train(shards, tmp_path / "run", "tiny", steps=40, batch_size=4, lr=3e-3, warmup=5, seed=0,
              log_every=10, progress=False)
    assert s["first_loss"] == pytest.approx(math.log(51200), abs=0.3)  # uniform at init
    assert s["last_loss_mean10"] < s["first_loss"] - 2.5, s
    assert s["steps"] == 40 and s["tokens"] == 40 * 4 * 128 and s["tokens_per_second"] > 0
    lines = [r for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) if "event" not in r]
    assert [r["step"] for r in lines] == list(range(40))
    assert set(lines[0]) >= {"step", "loss", "lr", "grad_norm", "tokens_seen", "seconds", "tokens_per_second",
                             "spike"}
    assert lines[5]["lr"] == pytest.approx(3e-3) and lines[-1]["tokens_seen"] == 40 * 4 * 128
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000
    assert load_checkpoint(s["checkpoint"]).step == 40


@pytest.mark.slow  # > 7 s on 2 cores
def test_resume_is_bit_exact(shards, tmp_path):
    kw = dict(config_name="tiny", batch_size=2, lr=3e-3, warmup=2, total_steps=6, seed=3, progress=False,
              plot=False)
    full = train(shards, tmp_path / "full", steps=6, **kw)
    train(shards, tmp_path / "split", steps=3, **kw)
    resumed = train(shards, tmp_path / "split", steps=6, resume=True, **kw)
    assert resumed["start_step"] == 3 and resumed["steps"] == 3 and resumed["tokens"] == 3 * 2 * 128
    # summary.json covers the whole run (losses of the earlier session included), timings this session
    whole = ("first_loss", "first_loss_mean10", "last_loss", "last_loss_mean10", "final_step", "tokens_seen",
             "switches", "spike_steps")
    assert {k: resumed[k] for k in whole} == {k: full[k] for k in whole}
    assert json.loads((tmp_path / "split" / "summary.json").read_text())["first_loss"] == full["first_loss"]
    opt = make_optimizer(OptimizerConfig(peak_lr=3e-3, warmup_steps=2, total_steps=6))
    tmpl = jax.eval_shape(lambda: opt.init(init_params(CONFIGS["tiny"], 0)))
    a = load_checkpoint(full["checkpoint"], opt_state_template=tmpl)
    b = load_checkpoint(resumed["checkpoint"], opt_state_template=tmpl)
    for x, y in zip(jax.tree.leaves((a.params, a.opt_state)), jax.tree.leaves((b.params, b.opt_state))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    la = [r["loss"] for r in map(json.loads, (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    lb = [r["loss"] for r in map(json.loads, (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert la == lb and len(la) == 6
    again = train(shards, tmp_path / "split", steps=6, resume=True, **kw)  # finished: nothing to do
    assert again["steps"] == 0 and again["checkpoint"] == resumed["checkpoint"]
    with pytest.raises(ValueError, match="seed: 3 -> 4"):
        train(shards, tmp_path / "split", steps=7, resume=True, **{**kw, "seed": 4})


def test_config_differences_names_each_changed_leaf():
    new = {"seed": 3, "data": {"manifest_file_sha256": "ab", "recipe": "r"}}
    assert config_differences(new, new) == []
    assert config_differences(new, {**new, "seed": 4}) == ["seed: 3 -> 4"]
    assert config_differences({**new, "data": {"manifest_file_sha256": "cd", "recipe": "r"}}, new) == [
        "data.manifest_file_sha256: 'cd' -> 'ab'"]


def test_steps_beyond_the_plan_name_the_budget_fraction(shards, tmp_path):
    with pytest.raises(ValueError, match=r"budget fraction 0.5 .* larger --budget-fraction"):
        train(shards, tmp_path / "x", "tiny", steps=10**6, warmup=1, budget_fraction=0.5, progress=False)
    with pytest.raises(ValueError, match="build shards with more data"):
        train(shards, tmp_path / "x", "tiny", steps=10**6, warmup=1, progress=False)


def test_train_rejects_mismatched_model(shards, tmp_path):
    with pytest.raises(ValueError, match="warmup"):
        train(shards, tmp_path / "x", "tiny", steps=5, warmup=2000, progress=False)
    with pytest.raises(InputError, match="unknown model config"):
        train(shards, tmp_path / "x", "nope", steps=5, warmup=1, progress=False)


def test_cli_train(shards, tmp_path):
    from click.testing import CliRunner

    from cli.train_cmd import train as train_cmd

    out = tmp_path / "cli"
    res = CliRunner().invoke(train_cmd, ["--shards", str(shards), "--out", str(out), "--config", "tiny",
                                         "--steps", "3", "--batch-size", "2", "--lr", "3e-3", "--warmup", "1",
                                         "--quiet"])
    assert res.exit_code == 0, res.output
    assert "loss" in res.output and "tokens/s" in res.output
    last = [line for line in res.output.splitlines() if line.startswith("{")][-1]
    assert json.loads(last)["steps"] == 3
    assert (out / "summary.json").is_file() and latest_checkpoint(out / "checkpoints").name == "step_00000003"
    bad = CliRunner().invoke(train_cmd, ["--shards", str(tmp_path), "--out", str(out), "--warmup", "1"])
    assert bad.exit_code == 3 and "no manifest.json" in bad.output


def test_cli_module_does_not_import_jax():
    code = "import sys, cli.train_cmd; assert 'jax' not in sys.modules, 'jax imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


def test_out_of_vocabulary_ids_are_caught_without_verify(small_shards):
    ld = ShardLoader(small_shards, batch_size=4)
    f = small_shards / "stage1/s1/shard-00000.bin"
    data = np.fromfile(f, dtype="<u2")
    data[:] = 65535
    data.tofile(f)
    with pytest.raises(ShardFormatError, match="shard-00000.bin: token id 65535"):
        for step in range(ld.n_sequences // 4 + 1):  # verify=False: no sha256 check, the range check still runs
            ShardLoader(small_shards, batch_size=4, verify=False).batch_at(0, step)


def test_fresh_run_refuses_a_folder_with_checkpoints(shards, tmp_path):
    kw = dict(config_name="tiny", batch_size=1, lr=1e-3, warmup=1, seed=0, progress=False, plot=False)
    train(shards, tmp_path / "run", steps=2, **kw)
    with pytest.raises(ValueError, match="checkpoints of an earlier run"):
        train(shards, tmp_path / "run", steps=3, **kw)


def test_nonfinite_update_is_skipped_and_spike_skip_optional():
    """A NaN loss/gradient never reaches params or optimizer state; a flagged spike is skipped only on request."""
    from xgen_train.loop.step import make_train_step as pure_step
    params = {"w": jnp.ones((3,), jnp.float32)}
    opt = make_optimizer(OptimizerConfig(peak_lr=1e-2, warmup_steps=1, total_steps=10))

    def loss_fn(p, x):
        return jnp.sum((p["w"] * x[0].astype(jnp.float32)) ** 2) / x[1, 0]

    for skip_spikes in (False, True):
        opts = StepOptions(spike_window=4, spike_min_history=2, skip_spikes=skip_spikes)
        step = jax.jit(pure_step(loss_fn, opt, opts))
        p, s, mon = params, opt.init(params), init_monitor(opts)
        ok = jnp.asarray([[1, 1, 1], [1, 1, 1]], jnp.int32)
        for _ in range(3):
            p, s, mon, m = step(p, s, mon, ok)
            assert int(m["skipped"]) == 0
        before = jax.tree.map(np.asarray, (p, s))
        p, s, mon, m = step(p, s, mon, jnp.asarray([[1, 1, 1], [0, 0, 0]], jnp.int32))  # division by 0: inf/nan
        assert (int(m["nonfinite"]), int(m["skipped"])) == (1, 1)
        for a, b in zip(jax.tree.leaves(before), jax.tree.leaves((p, s))):
            assert np.array_equal(a, np.asarray(b))
        p2, s2, mon, m = step(p, s, mon, jnp.asarray([[50, 50, 50], [1, 1, 1]], jnp.int32))  # a spike
        assert int(m["spike"]) == 1 and int(m["skipped"]) == int(skip_spikes)
        assert np.array_equal(np.asarray(p2["w"]), np.asarray(p["w"])) == skip_spikes
