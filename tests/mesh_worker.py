"""Subprocess worker for tests/test_sharding.py: runs on 8 simulated CPU devices and prints one JSON line.

``XLA_FLAGS=--xla_force_host_platform_device_count=8`` must be set before JAX is imported, hence a separate
process. Usage: ``python tests/mesh_worker.py steps|train WORKDIR SHARDS_DIR`` (not collected by pytest);
``steps`` does 1 and 2 below, ``train`` does 3.

1. The tiny model's update on a fixed batch (8 x 16 random token ids) for 2 steps: losses on one device
   (plain jit, no shardings) and under several meshes; under each mesh the device-drawn init
   (``fresh_params(..., "device")``) is compared bit for bit with the one-device jitted init.
2. The data=8 state saved by the trainer's CheckpointStore, restored under fsdp=4,tensor=2 and onto one
   device: every array compared bit for bit with the saved one.
3. The trainer under fsdp=4,tensor=2 for 2 updates, then resumed under data=2,fsdp=2,tensor=2 to 4: the
   losses are returned for comparison with a one-device run in the test process.
"""
from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from xgen_train.loop.checkpoint import CheckpointStore, load_checkpoint, make_meta  # noqa: E402
from xgen_train.loop.optimizer import OptimizerConfig, make_optimizer  # noqa: E402
from xgen_train.loop.step import StepOptions, init_monitor  # noqa: E402
from xgen_train.loop.trainer import fresh_params, make_train_step, train  # noqa: E402
from xgen_train.model.config import CONFIGS  # noqa: E402
from xgen_train.model.model import build_model, init_params  # noqa: E402
from xgen_train.scale import sharding as sh  # noqa: E402

MESHES = ("data=8", "fsdp=8", "tensor=2,data=4", "data=2,fsdp=2,tensor=2")


def run_steps(mesh_spec: str | None, tokens: np.ndarray, n_steps: int = 2):
    cfg = CONFIGS["tiny"]
    opt = make_optimizer(OptimizerConfig(peak_lr=3e-3, warmup_steps=0, total_steps=10))
    model = build_model(cfg)
    if mesh_spec is None:  # the reference: one device, no shardings anywhere
        params = jax.jit(lambda: init_params(cfg, 0))()
        state = opt.init(params)
        step = make_train_step(model, opt)
        batch = jnp.asarray(tokens)
        monitor = init_monitor(StepOptions())
    else:
        mesh = sh.make_mesh(mesh_spec)
        tmpl = jax.eval_shape(lambda: init_params(cfg, 0))
        p_sh = sh.param_shardings(tmpl, mesh, cfg)
        s_sh = sh.state_shardings(jax.eval_shape(opt.init, tmpl), tmpl, mesh)
        rep, b_sh = sh.replicated(mesh), sh.batch_sharding(mesh, tokens.shape[0])
        params = fresh_params(cfg, 0, p_sh, "device")  # each device draws its own shards
        state = jax.jit(opt.init, out_shardings=s_sh)(params)
        init_equal = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(
            jax.tree.leaves(params), jax.tree.leaves(jax.jit(lambda: init_params(cfg, 0))())))
        step = make_train_step(model, opt, shardings=(p_sh, s_sh, rep, b_sh))
        batch = sh.put_global(tokens, b_sh)
        monitor = jax.device_put(init_monitor(StepOptions()), rep)
    losses = [] if mesh_spec is None else [init_equal]
    for _ in range(n_steps):
        params, state, monitor, m = step(params, state, monitor, batch)
        losses.append(m["loss"])
    shard_shape = params["model/layers_0/mlp/gate_proj"]["weight"].addressable_shards[0].data.shape
    return [x if isinstance(x, bool) else float(x) for x in jax.device_get(losses)], params, state, list(shard_shape)


def main(mode: str, work: Path, shards: Path) -> dict:
    out: dict = {"n_devices": jax.device_count()}
    if mode == "train":
        return {**out, **trainer_across_meshes(work, shards)}
    tokens = np.random.default_rng(0).integers(0, 50313, (8, 16)).astype(np.int32)
    out["reference"], _, _, _ = run_steps(None, tokens)
    out["meshes"], out["shard_shapes"] = {}, {}
    saved = None
    for spec in MESHES:
        (init_equal, *losses), params, state, shard_shape = run_steps(spec, tokens)
        out["meshes"][spec], out["shard_shapes"][spec] = losses, shard_shape
        out.setdefault("device_init_equal", {})[spec] = init_equal
        if spec == "data=8":
            saved = (params, state)

    # 2. save under data=8, restore under fsdp=4,tensor=2 and onto one device
    cfg = CONFIGS["tiny"]
    opt = make_optimizer(OptimizerConfig(peak_lr=3e-3, warmup_steps=0, total_steps=10))
    with CheckpointStore(work / "ck") as store:
        d = store.save(2, saved[0], saved[1], make_meta(2, {}, {"model_config": cfg.to_dict()}))
    want = [np.asarray(x) for x in jax.tree.leaves(saved)]
    mesh = sh.make_mesh("fsdp=4,tensor=2")
    tmpl = jax.eval_shape(lambda: init_params(cfg, 0))
    s_tmpl = jax.eval_shape(opt.init, tmpl)
    shardings = (sh.param_shardings(tmpl, mesh, cfg), sh.state_shardings(s_tmpl, tmpl, mesh))
    other = load_checkpoint(d, opt_state_template=s_tmpl, shardings=shardings)
    one = load_checkpoint(d, opt_state_template=s_tmpl)
    got_other = jax.tree.leaves((other.params, other.opt_state))
    got_one = jax.tree.leaves((one.params, one.opt_state))
    out["restore_other_mesh_equal"] = all(np.array_equal(a, np.asarray(b)) for a, b in zip(want, got_other))
    out["restore_other_mesh_layout"] = str(other.params["lm_head"]["weight"].sharding.spec)
    out["restore_other_mesh_devices"] = len(other.params["lm_head"]["weight"].sharding.device_set)
    out["restore_single_equal"] = all(np.array_equal(a, b) for a, b in zip(want, got_one))
    out["restore_single_numpy"] = all(isinstance(b, np.ndarray) for b in got_one)
    out["n_leaves"] = len(want)
    return out


def trainer_across_meshes(work: Path, shards: Path) -> dict:
    """3. the trainer under one mesh, resumed under another."""
    out: dict = {}
    kw = dict(config_name="tiny", batch_size=8, lr=3e-3, warmup=1, total_steps=4, seed=1, progress=False,
              plot=False, log_every=2)
    run = work / "run"
    first = train(shards, run, steps=2, mesh="fsdp=4,tensor=2", **kw)
    second = train(shards, run, steps=4, resume=True, mesh="data=2,fsdp=2,tensor=2", **kw)
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    out["train_losses"] = [r["loss"] for r in recs if "event" not in r]
    out["train_meshes"] = [first["mesh"], second["mesh"]]
    out["run_json"] = {k: json.loads((run / "run.json").read_text())[k]
                       for k in ("mesh", "process_index", "process_count", "device_count")}
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))))
