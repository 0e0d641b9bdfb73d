"""Device mesh, partition rules, sharded checkpoints, the no-sync loop, MFU, multi-host start and resume defaults."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # conftest_train
from conftest_train import build_shards  # noqa: E402

from xgen_train.loop import data as data_mod  # noqa: E402
from xgen_train.loop import trainer  # noqa: E402
from xgen_train.loop.optimizer import OptimizerConfig, make_optimizer  # noqa: E402
from xgen_train.loop.step import StepOptions, init_monitor  # noqa: E402
from xgen_train.model.config import CONFIGS, ModelConfig, count_parameters  # noqa: E402
from xgen_train.model.model import init_params  # noqa: E402
from xgen_train.scale import flops  # noqa: E402
from xgen_train.scale import sharding as sh
from xgen_train.scale.distributed import distributed_reason, maybe_initialize  # noqa: E402

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """~40k real GPT-2 tokens of shared nl sample text, seq_len 128, one shard file."""
    return build_shards(tmp_path_factory.mktemp("mesh") / "s128", seq_len=128, n_files=1, max_tokens=40_000)


def _records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------------------ rules


def test_partition_rules_cover_every_param_and_optimizer_state():
    for name in ("tiny", "xgen-7b"):
        cfg = CONFIGS[name]
        tmpl = jax.eval_shape(lambda cfg=cfg: init_params(cfg, 0))
        specs = jax.tree_util.tree_flatten_with_path(sh.param_specs(tmpl),
                                                     is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))[0]
        assert len(specs) == 9 * cfg.n_layers + 3  # every parameter got a rule
        by_name = {"/".join(k.key for k in p): s for p, s in specs}
        assert by_name["model/layers_0/self_attn/q_proj/weight"] == jax.sharding.PartitionSpec("tensor", "fsdp")
        assert by_name["model/layers_0/mlp/down_proj/weight"] == jax.sharding.PartitionSpec("fsdp", "tensor")
        assert by_name["model/norm/weight"] == jax.sharding.PartitionSpec(None)
        sh.check_divisible(tmpl, {"data": 1, "fsdp": 8, "tensor": 4}, cfg)
    cfg = CONFIGS["tiny"]
    tmpl = jax.eval_shape(lambda: init_params(cfg, 0))
    mesh = sh.make_mesh(None)
    opt = make_optimizer(OptimizerConfig(peak_lr=1e-3, warmup_steps=1, total_steps=10))
    state = jax.eval_shape(opt.init, tmpl)
    st = sh.state_shardings(state, tmpl, mesh)
    assert jax.tree.structure(st) == jax.tree.structure(state)
    mu = st[1][0].mu["model/layers_0/self_attn/o_proj"]["weight"]
    assert mu.spec == jax.sharding.PartitionSpec("fsdp", "tensor") and st[1][0].count.spec == jax.sharding.PartitionSpec()
    new = {**tmpl, "model/layers_0/mlp/extra_proj": {"weight": jax.ShapeDtypeStruct((4, 4), jnp.float32)}}
    with pytest.raises(sh.MeshError, match="no partition rule for parameter 'model/layers_0/mlp/extra_proj/weight'"):
        sh.param_specs(new)
    with pytest.raises(sh.MeshError, match="matches no parameter"):
        sh.state_shardings({"odd": jnp.zeros((3, 3))}, tmpl, mesh)


def test_mesh_specs_and_divisibility_errors():
    assert sh.parse_mesh(None, 8) == {"data": 8, "fsdp": 1, "tensor": 1}
    assert sh.parse_mesh("fsdp=2,tensor=2", 8) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert sh.parse_mesh("tensor=2,data=4", 8) == {"data": 4, "fsdp": 1, "tensor": 2}
    assert sh.describe_mesh(sh.parse_mesh("fsdp=8", 8)) == "data=1,fsdp=8,tensor=1"
    for spec, msg in (("data=3", "uses 3 devices, but 8 are present"), ("pipe=2", "unknown axis 'pipe'"),
                      ("data=x", "not a positive integer"), ("data=0", "not a positive integer"),
                      ("tensor=3", "does not divide the 8 devices"), ("data", "not axis=size"),
                      ("data=2,data=4", "given twice")):
        with pytest.raises(sh.MeshError, match=msg):
            sh.parse_mesh(spec, 8)
    small = jax.eval_shape(lambda: init_params(CONFIGS["small"], 0))  # hidden 256, 8 heads, intermediate 688
    with pytest.raises(sh.MeshError, match=r"hidden 256 not divisible by fsdp=3 \(.*weight dim 1\)"):
        sh.check_divisible(small, {"data": 1, "fsdp": 3, "tensor": 1})
    with pytest.raises(sh.MeshError, match="n_heads 8 not divisible by tensor=3"):
        sh.check_divisible(small, {"data": 1, "fsdp": 1, "tensor": 3}, CONFIGS["small"])
    odd = ModelConfig(vocab_size=51200, hidden=256, intermediate=690, n_layers=1, n_heads=8, max_positions=64)
    with pytest.raises(sh.MeshError, match="intermediate 690 not divisible by tensor=4"):
        sh.check_divisible(jax.eval_shape(lambda: init_params(odd, 0)), {"data": 1, "fsdp": 1, "tensor": 4}, odd)
    with pytest.raises(sh.MeshError, match="batch size 6 not divisible by data\\*fsdp = 4"):
        sh.check_batch(6, {"data": 2, "fsdp": 2, "tensor": 2})
    sh.check_batch(8, {"data": 2, "fsdp": 2, "tensor": 2})


# ------------------------------------------------------------------------------------------------ 8 devices


def _on_8_devices(mode: str, work: Path, shards: Path) -> dict:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "TF_CPP_MIN_LOG_LEVEL": "1"}  # XLA's warnings shown (checked below)
    res = subprocess.run([sys.executable, str(ROOT / "tests" / "mesh_worker.py"), mode, str(work), str(shards)],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["n_devices"] == 8
    # every layout change is a real collective: XLA never falls back to replicating an array first
    assert "Involuntary full rematerialization" not in res.stderr, res.stderr[-3000:]
    return out


@pytest.mark.slow  # > 7 s on 2 cores
def test_sharded_matches_one_device_and_checkpoints_cross_meshes(shards, tmp_path):
    """8 simulated CPU devices (a subprocess): losses equal one device's for 4 mesh shapes; a checkpoint saved
    under data=8 restores bit-identically under fsdp=4,tensor=2 and onto one device."""
    out = _on_8_devices("steps", tmp_path / "w", shards)
    ref = out["reference"]
    assert len(ref) == 2 and ref[1] < ref[0]  # the update did something
    for spec, losses in out["meshes"].items():
        np.testing.assert_allclose(losses, ref, rtol=0, atol=1e-5, err_msg=spec)
    # the layout really is split: gate_proj [352, 128] as (tensor, fsdp)
    assert out["shard_shapes"] == {"data=8": [352, 128], "fsdp=8": [352, 16], "tensor=2,data=4": [176, 128],
                                   "data=2,fsdp=2,tensor=2": [176, 64]}
    assert out["restore_other_mesh_equal"] and out["restore_single_equal"] and out["restore_single_numpy"]
    assert out["device_init_equal"] == {m: True for m in out["meshes"]}  # each device drew its own shards
    assert out["restore_other_mesh_layout"] == "P('tensor', 'fsdp')" and out["restore_other_mesh_devices"] == 8


@pytest.mark.slow
def test_trainer_under_one_mesh_resumed_under_another_equals_one_device(shards, tmp_path):
    """The trainer on 8 simulated devices under fsdp=4,tensor=2, resumed under data=2,fsdp=2,tensor=2, gives
    the losses of a one-device run; on one device the loop equals a plain per-step loop bit for bit."""
    out = _on_8_devices("train", tmp_path / "w", shards)
    assert out["train_meshes"] == ["data=1,fsdp=4,tensor=2", "data=2,fsdp=2,tensor=2"]
    assert out["run_json"] == {"mesh": "data=2,fsdp=2,tensor=2", "process_index": 0, "process_count": 1,
                               "device_count": 8}
    one = trainer.train(shards, tmp_path / "one", config_name="tiny", steps=4, batch_size=8, lr=3e-3, warmup=1,
                        total_steps=4, seed=1, progress=False, plot=False, log_every=2)
    assert one["mesh"] == "data=1,fsdp=1,tensor=1"
    losses_one = [r["loss"] for r in _records(tmp_path / "one") if "event" not in r]
    np.testing.assert_allclose(out["train_losses"], losses_one, rtol=0, atol=1e-5)
    # on one device the loop computes exactly what a plain per-step loop computes (bit for bit)
    opt = make_optimizer(OptimizerConfig(peak_lr=3e-3, warmup_steps=1, total_steps=4))
    from xgen_train.loop.step import make_train_step as pure_step
    from xgen_train.model.numerics import NumericsOptions
    loss_fn = trainer._make_numerics_loss(CONFIGS["tiny"], NumericsOptions().resolved())  # the trainer's default
    step = trainer.jit_step(pure_step(loss_fn, opt, StepOptions()))
    params = init_params(CONFIGS["tiny"], 1)
    state, monitor = opt.init(params), init_monitor(StepOptions())
    loader, plain = data_mod.ShardLoader(shards, 8), []
    for k in range(4):
        params, state, monitor, m = step(params, state, monitor, jnp.asarray(loader.batch_at(1, k)["tokens"]))
        plain.append(float(m["loss"]))
    assert plain == losses_one


# ------------------------------------------------------------------------------------------------ the loop


@pytest.mark.slow  # > 7 s on 2 cores
def test_metrics_fetched_in_groups_mfu_and_late_nonfinite(shards, tmp_path, monkeypatch):
    """No host sync per update: metrics come back in one transfer per log_every updates; a NaN loss planted at
    update 7 is noticed when its group is fetched, its record written, and the error names the step."""
    fetched = []
    real_fetch = trainer._fetch

    def counting_fetch(tree):
        if isinstance(tree, list) and tree and isinstance(tree[0], dict):
            fetched.append(len(tree))
        return real_fetch(tree)

    monkeypatch.setattr(trainer, "_fetch", counting_fetch)
    real_loss = trainer._make_numerics_loss  # (objective, aux) loss of xgen_train.model.loss.make_loss_fn

    def loss_with_planted_nan(cfg, num):
        base = real_loss(cfg, num)

        def loss(p, t):
            objective, aux = base(p, jnp.maximum(t, 0))
            bad = jnp.where(t[0, 0] < 0, jnp.nan, 0.0)
            return objective + bad, {**aux, "ce": aux["ce"] + bad}
        return loss

    monkeypatch.setattr(trainer, "_make_numerics_loss", loss_with_planted_nan)
    real_batch_at = data_mod.ShardLoader.batch_at

    def batch_at(self, seed, step):
        b = real_batch_at(self, seed, step)
        if step == 7:
            b["tokens"][0, 0] = -1
        return b

    monkeypatch.setattr(data_mod.ShardLoader, "batch_at", batch_at)
    run = tmp_path / "run"
    with pytest.raises(FloatingPointError, match="non-finite loss nan at step 7"):
        trainer.train(shards, run, config_name="tiny", steps=10, batch_size=2, lr=3e-3, warmup=1, seed=0,
                      progress=False, plot=False, log_every=5, peak_flops=1e12)
    assert fetched == [5, 5]  # two transfers for ten updates
    recs = [r for r in _records(run) if "event" not in r]
    assert [r["step"] for r in recs] == list(range(8))  # written up to the bad update
    assert recs[-1]["nonfinite"] and recs[-1]["skipped"] and not recs[0]["nonfinite"]
    fpt = flops.flops_per_token(CONFIGS["tiny"], 128)
    for r in recs:
        assert r["mfu"] == pytest.approx(r["tokens_per_second"] * fpt / 1e12)
        assert r["tokens_per_second"] == pytest.approx(2 * 128 / r["seconds"])
    run_json = json.loads((run / "run.json").read_text())
    assert run_json["peak_flops"] == 1e12 and run_json["process_count"] == 1 and run_json["mesh"].startswith("data=")


def test_flops_per_token_and_mfu_hand_computed():
    cfg = CONFIGS["tiny"]  # d 128, i 352, 2 layers, V 51200
    n = 2 * (4 * 128 * 128 + 3 * 128 * 352) + 51200 * 128
    assert flops.matmul_params(cfg) == n == 6_955_008
    assert flops.flops_per_token(cfg, 128) == 6 * n + 12 * 2 * 128 * 128 == 42_123_264
    assert flops.mfu(1000.0, cfg, 128, 2, 1e12) == pytest.approx(0.021061632)
    big = CONFIGS["xgen-7b"]  # 6N + attention at 2K: N excludes the input embedding and the norm gains
    assert flops.matmul_params(big) == count_parameters(big) - 51200 * 4096 - (2 * 32 + 1) * 4096
    assert flops.flops_per_token(big, 2048) == 6 * flops.matmul_params(big) + 12 * 32 * 4096 * 2048
    assert flops.peak_flops("TPU v4") == 275e12 and flops.peak_flops("TPU v5 lite") == 197e12
    assert flops.peak_flops("NVIDIA H100 80GB HBM3") == 989e12 and flops.peak_flops("NVIDIA H100 PCIe") == 756e12
    assert flops.peak_flops("NVIDIA A100-SXM4-40GB") == 312e12 and flops.peak_flops("NVIDIA H200") == 989e12
    assert flops.peak_flops("cpu") is None and flops.mfu(1000.0, cfg, 128, 1, None) is None
    assert flops.peak_flops("cpu", override=2e12) == 2e12
    with pytest.raises(ValueError):
        flops.peak_flops("cpu", override=0)


# ------------------------------------------------------------------------------------------------ multi-host


def test_distributed_start_only_when_the_environment_asks():
    assert distributed_reason({}) is None
    assert distributed_reason({"XGEN_DISTRIBUTED": "1"}) == "XGEN_DISTRIBUTED=1"
    assert distributed_reason({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}) == "JAX_COORDINATOR_ADDRESS"
    assert distributed_reason({"JAX_COORDINATOR_ADDRESS": "h:1", "XGEN_DISTRIBUTED": "0"}) is None
    assert distributed_reason({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}) is None
    assert distributed_reason({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "16"}) == "SLURM_NTASKS>1"
    assert distributed_reason({"OMPI_COMM_WORLD_SIZE": "4"}) == "OMPI_COMM_WORLD_SIZE>1"
    assert distributed_reason({"TPU_WORKER_HOSTNAMES": "t-0"}) is None
    assert distributed_reason({"TPU_WORKER_HOSTNAMES": "t-0,t-1,t-2,t-3"}) == "TPU_WORKER_HOSTNAMES"
    assert maybe_initialize({}) is None  # a single process: nothing is started


# ------------------------------------------------------------------------------------------------ CLI resume


@pytest.mark.slow  # > 7 s on 2 cores
def test_cli_resume_takes_untyped_options_from_run_json(shards, tmp_path):
    from click.testing import CliRunner

    from cli.train_cmd import train as train_cmd

    out = tmp_path / "cli"
    first = ["--shards", str(shards), "--out", str(out), "--steps", "2", "--batch-size", "2", "--lr", "3e-3",
             "--warmup", "1", "--seed", "3", "--log-every", "2", "--quiet"]
    res = CliRunner().invoke(train_cmd, first)
    assert res.exit_code == 0, res.output
    assert "MFU n/a" in res.output and "mesh data=1" in res.output
    # only --resume, --out and a new cap: shards, batch, lr, warmup and seed come from run.json
    res = CliRunner().invoke(train_cmd, ["--out", str(out), "--resume", "--steps", "3", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "steps 2..3" in res.output
    res = CliRunner().invoke(train_cmd, ["--out", str(out), "--resume", "--lr", "1e-3", "--seed", "3"])
    assert res.exit_code == 2 and "optimizer.peak_lr: 0.003 -> 0.001" in res.output
    assert "seed:" not in res.output  # typed but equal: not a difference
    res = CliRunner().invoke(train_cmd, ["--out", str(out), "--resume", "--batch-tokens", "256"])
    assert res.exit_code == 2 and "batch.batch_size: 2 -> None" in res.output
    res = CliRunner().invoke(train_cmd, ["--out", str(tmp_path / "new")])
    assert res.exit_code == 2 and "Missing option '--shards'" in res.output


@pytest.mark.slow  # > 7 s on 2 cores
def test_fresh_init_on_host_or_device():
    """A device-drawn init equals the host draw up to float rounding; auto picks the host for small models and
    the devices for a 7B model (whose host copy would be 27 GB); a bad value is refused."""

    cfg = CONFIGS["tiny"]
    mesh = sh.make_mesh(None)
    p_sh = sh.param_shardings(jax.eval_shape(lambda: init_params(cfg, 3)), mesh, cfg)
    host, dev = trainer.fresh_params(cfg, 3, p_sh, "host"), trainer.fresh_params(cfg, 3, p_sh, "device")
    for a, b in zip(jax.tree.leaves(host), jax.tree.leaves(dev)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)
    assert not all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in
                   zip(jax.tree.leaves(dev), jax.tree.leaves(trainer.fresh_params(cfg, 4, p_sh, "device"))))
    assert trainer.resolve_init_on("auto", cfg) == "host"
    assert trainer.resolve_init_on("auto", CONFIGS["xgen-7b"]) == "device"
    with pytest.raises(ValueError, match="init_on"):
        trainer.resolve_init_on("gpu", cfg)
