"""Helpers for the export / generation / evaluation tests: a non-trivial small model and a real run folder.

Not a conftest.py: import it explicitly.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path

import jax
import numpy as np
import pytest

from xgen_train.model.config import ModelConfig

#: vocabulary of SPEC §3 (51,200) so exports load as the real model would; small widths for CPU speed.
MICRO = ModelConfig(vocab_size=51200, hidden=64, intermediate=176, n_layers=2, n_heads=4, max_positions=256)


def perturbed_params(cfg: ModelConfig, seed: int = 0, scale: float = 2.0):
    """HF-style init, then matrices x ``scale`` and norm gains ``1 + 0.1 N(0, 1)``: norms matter and
    attention is far from uniform, so a misnamed or transposed tensor changes the logits."""
    from xgen_train.model.model import init_params

    params = init_params(cfg, seed)
    rng = np.random.default_rng(seed)

    def change(x):
        x = np.asarray(x)
        if x.ndim == 1:
            return (x + 0.1 * rng.standard_normal(x.shape)).astype(np.float32)
        return (x * scale).astype(np.float32)

    return jax.tree.map(change, params)


def make_run(root: str | os.PathLike, cfg: ModelConfig, params, step: int = 3) -> Path:
    """A run folder as ``xgen train`` leaves it: ``root/checkpoints/step_NNNNNNNN`` (orbax + sidecar) and
    ``run.json``."""
    import json

    from xgen_train.loop.checkpoint import CheckpointStore, make_meta
    from xgen_train.loop.optimizer import OptimizerConfig, make_optimizer

    root = Path(root)
    opt_state = make_optimizer(OptimizerConfig(warmup_steps=1, total_steps=10)).init(params)
    meta = make_meta(step, position={}, run={"model_config": cfg.to_dict()})
    with CheckpointStore(root / "checkpoints", keep=1) as store:
        store.save(step, params, opt_state, meta)
    (root / "run.json").write_text(json.dumps({"model_config": cfg.to_dict(), "data": {"seq_len": 128}}))
    return root


def require(module: str):
    """Import an optional ``[hf]`` dependency; skip without it, unless ``XGEN_REQUIRE_HF=1`` (CI) makes its
    absence a failure."""
    if os.environ.get("XGEN_REQUIRE_HF") == "1":
        return importlib.import_module(module)
    return pytest.importorskip(module)


def sample_texts(name: str = "nl.jsonl", limit: int | None = None) -> list[str]:
    import json

    from conftest import shared_path

    out = []
    with open(shared_path("corpus", "sample", name), encoding="utf-8") as fh:
        for line in fh:
            out.append(json.loads(line)["text"])
            if limit and len(out) >= limit:
                break
    return out
