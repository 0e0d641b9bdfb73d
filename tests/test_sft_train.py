"""Instruction tuning in the trainer (SPEC §5): the response-token loss, its normalisation across
accumulation, a short SFT run, SFT resume bit-identity, and TrainConfig's round trip through run.json."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from sft_helpers import build_sft_shards  # noqa: E402

from cli.main import cli  # noqa: E402
from xgen_train.loop.checkpoint import load_params  # noqa: E402
from xgen_train.loop.config import RunConfigError, TrainConfig, load_run_config  # noqa: E402
from xgen_train.loop.sft_data import SFTLoader  # noqa: E402
from xgen_train.loop.step import token_sum_value_and_grad  # noqa: E402
from xgen_train.loop.trainer import train  # noqa: E402
from xgen_train.model.config import CONFIGS  # noqa: E402
from xgen_train.model.model import init_params  # noqa: E402
from xgen_train.model.numerics import NumericsOptions  # noqa: E402
from xgen_train.model.sft_loss import make_sft_loss_fn, response_token_count, sft_targets  # noqa: E402

CFG = CONFIGS["tiny"]


@pytest.fixture(scope="module")
def sft_shards(tmp_path_factory) -> Path:
    return build_sft_shards(tmp_path_factory.mktemp("sft") / "shards", seq_len=64)


def _batch(seed: int = 0, b: int = 4, length: int = 32) -> dict:
    """Rows of 1-3 segments with different response lengths, and padding."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 1000, (b, length))
    mask, seg = np.zeros((b, length), np.int32), np.zeros((b, length), np.int32)
    for i in range(b):
        t, k = 0, 1
        while t < length - 8:
            n_prompt, n_resp = int(rng.integers(2, 6)), int(rng.integers(1, 4 + 3 * i))
            end = min(t + n_prompt + n_resp, length - 2)
            seg[i, t:end], mask[i, t + n_prompt:end] = k, 1
            t, k = end, k + 1
    return {"tokens": jnp.asarray(tokens, jnp.int32), "loss_mask": jnp.asarray(mask), "segment_ids": jnp.asarray(seg)}


def _vg(num: NumericsOptions, accum: int = 1):
    return jax.jit(token_sum_value_and_grad(make_sft_loss_fn(CFG, num), response_token_count, accum))


def _reference_mean(params, batch) -> float:
    """Per-token mean cross-entropy over the whole batch's scored positions, from full logits."""
    loss_sum = jax.jit(make_sft_loss_fn(CFG, NumericsOptions(loss_chunk=0, precision="f32")))
    total = count = 0.0
    for i in range(batch["tokens"].shape[0]):  # one row at a time: a per-row sum, weighted by its own count
        row = {k: v[i:i + 1] for k, v in batch.items()}
        total += float(loss_sum(params, row)[1]["ce"])
        count += float(response_token_count(row))
    return total / count


@pytest.mark.parametrize("loss_chunk", [0, 16])
@pytest.mark.slow  # > 6 s on 2 cores
def test_masked_labels_change_neither_loss_nor_gradients(loss_chunk):
    params = init_params(CFG, 0)
    batch = _batch()
    _, weights = sft_targets(batch["tokens"], batch["loss_mask"], batch["segment_ids"])
    labels = jnp.concatenate([batch["tokens"][:, 1:], batch["tokens"][:, :1]], axis=1)
    vg = _vg(NumericsOptions(loss_chunk=loss_chunk, precision="f32"))
    (loss, _), grads = vg(params, {**batch, "labels": labels})
    noise = jnp.asarray(np.random.default_rng(1).integers(0, 1000, labels.shape), jnp.int32)
    changed = jnp.where(weights > 0, labels, noise)
    assert int(jnp.sum(changed != labels)) > 20
    (loss2, _), grads2 = vg(params, {**batch, "labels": changed})
    assert float(loss2) == float(loss)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads2)))
    # the same labels at scored positions do change the loss (the check above can fail)
    (loss3, _), _ = vg(params, {**batch, "labels": jnp.where(weights > 0, noise, labels)})
    assert float(loss3) != float(loss)


@pytest.mark.slow  # > 7 s on 2 cores
def test_batch_loss_is_the_token_mean_with_and_without_accumulation():
    rng = np.random.default_rng(0)  # perturbed init: rows' per-token losses differ, so the weighting matters
    params = jax.tree.map(lambda x: x + 0.5 * rng.standard_normal(x.shape).astype(np.float32) * (x.std() + 1e-3),
                          init_params(CFG, 0))
    batch = _batch(seed=3)
    counts = [float(response_token_count({k: v[i:i + 1] for k, v in batch.items()})) for i in range(4)]
    assert len(set(counts)) > 1  # rows with different response lengths
    want = _reference_mean(params, batch)
    num = NumericsOptions(loss_chunk=0, precision="f32")
    (_, a1), g1 = _vg(num, 1)(params, batch)
    (_, a2), g2 = _vg(num, 2)(params, batch)
    for got in (a1["ce"], a2["ce"]):
        assert float(got) == pytest.approx(want, rel=1e-6)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)
    # a mean of per-micro-batch means (the transformers #24725 bug) would differ here: micro-batches of
    # unequal response-token counts
    halves = [{k: v[sl] for k, v in batch.items()} for sl in (slice(0, 1), slice(1, 4))]
    naive = np.mean([float(_vg(num, 1)(params, h)[0][1]["ce"]) for h in halves])
    assert abs(naive - want) > 1e-4


def test_sft_loader_reshuffles_per_epoch(sft_shards):
    ld = SFTLoader(sft_shards, 3)
    n = ld.n_sequences
    e0 = np.concatenate([ld.batch_indices(7, s)[0] for s in range(n // 3)])
    e1 = np.concatenate([ld.batch_indices(7, s)[0] for s in range(n // 3, 2 * (n // 3))])
    assert len(set(e0.tolist())) == len(e0) and len(set(e1.tolist())) == len(e1)
    assert e0.tolist() != e1.tolist()
    b = ld.batch_at(7, 0)
    assert set(b) >= {"tokens", "loss_mask", "segment_ids"} and b["tokens"].dtype == np.int32
    assert not np.any(b["loss_mask"][b["segment_ids"] == 0])


@pytest.mark.slow  # > 7 s on 2 cores
def test_short_sft_run_lowers_response_loss_and_resumes_bit_identically(sft_shards, tmp_path):
    kw = dict(config_name="tiny", batch_size=4, lr=3e-3, epochs=2, seed=3, progress=False, plot=False,
              eval_every=4, eval_sequences=4, log_every=4)
    full = train(sft_shards, tmp_path / "full", **kw)
    n_rows = json.loads((sft_shards / "manifest.json").read_text())["n_rows"]
    assert full["objective"] == "sft" and full["total_steps"] == 2 * n_rows // 4
    recs = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in recs if "event" not in r]
    vals = [r["val_loss"] for r in recs if r.get("event") == "val"]
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.5 and vals[-1] < vals[0]
    run = json.loads((tmp_path / "full" / "run.json").read_text())
    assert run["optimizer"]["b2"] == 0.99 and run["optimizer"]["weight_decay"] == 0.0
    assert run["data"]["objective"] == "sft" and run["data"]["epochs"] == 2
    assert load_run_config(tmp_path / "full").to_flat()["epochs"] == 2
    # half the run through the CLI, then `--resume` alone: every setting comes back from run.json
    res = CliRunner().invoke(cli, ["train", "--shards", str(sft_shards), "--out", str(tmp_path / "half"),
                                   "--config", "tiny", "--batch-size", "4", "--lr", "3e-3", "--epochs", "2",
                                   "--seed", "3", "--eval-every", "4", "--eval-sequences", "4", "--log-every", "4",
                                   "--steps", "6", "--quiet"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["train", "--out", str(tmp_path / "half"), "--resume", "--steps",
                                   str(full["total_steps"]), "--quiet"])
    assert res.exit_code == 0, res.output
    again = [json.loads(x) for x in (tmp_path / "half" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in again if "event" not in r] == losses
    _, p_full = load_params(tmp_path / "full")
    _, p_half = load_params(tmp_path / "half")
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(p_full), jax.tree.leaves(p_half)))


def test_train_config_round_trip_and_objective_defaults(tmp_path):
    tc = TrainConfig.from_flat(lr=1e-3, epochs=2, accum_steps=2, checkpoint_every=5)
    assert TrainConfig.from_dict(json.loads(json.dumps(tc.to_dict()))) == tc
    assert tc.resolved("sft").to_flat()["b2"] == 0.99 and tc.resolved("sft").to_flat()["lr"] == 1e-3
    assert tc.resolved("sft").data.batch_size == 128 and tc.resolved("pretrain").data.batch_tokens == 2048
    with pytest.raises(TypeError, match="unknown training setting"):
        TrainConfig.from_flat(learning_rate=1.0)
    (tmp_path / "run.json").write_text(json.dumps({"config": {"optimizer": {"lr": 1, "betas": 2}}}))
    with pytest.raises(ValueError, match="unknown setting.*betas"):
        load_run_config(tmp_path)
    # the 0.x format (run settings without a "config" record): one error naming the file and the way on
    old = {"config_name": "tiny", "optimizer": {"peak_lr": 0.003, "warmup_steps": 2}, "seed": 5}
    (tmp_path / "run.json").write_text(json.dumps(old))
    with pytest.raises(RunConfigError, match="older xgen") as err:
        load_run_config(tmp_path)
    assert str(tmp_path / "run.json") in str(err.value) and f"xgen train --init {tmp_path}" in str(err.value)
