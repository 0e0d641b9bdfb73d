"""Checkpoints as safetensors files plus a small JSON, written atomically (SPEC §4 carry-over of state).

A checkpoint is a directory::

    step_00000200/
      params.safetensors     float32 parameters, keys "module/param", e.g. "model/layers_0/self_attn/q_proj/weight"
                             (rename with xgen_train.model.hf_param_names for Hugging Face)
      opt_state.safetensors  optimizer state leaves, keys = the pytree path joined by "/",
                             e.g. "1/0/mu/model/norm/weight", "1/0/count"
      meta.json              {"format": "xgen-checkpoint", "format_version": 1, "step", "config_name",
                              "model_config", "data_seed", "files", "sha256", "extra"}

``step`` is the number of optimizer updates already applied, i.e. the next batch to train on is
``batch_at(data_seed, step)``. The directory is first written under a hidden temporary name in the
same parent and then renamed into place, so a reader never sees a half-written checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
import safetensors.numpy

from xgen_train.config import ModelConfig
from xgen_train.model import flat_params, unflat_params

__all__ = ["Checkpoint", "CheckpointError", "FORMAT", "flatten_tree", "latest_checkpoint",
           "load_checkpoint", "save_checkpoint", "unflatten_like"]

FORMAT = "xgen-checkpoint"
FORMAT_VERSION = 1
PARAMS_FILE = "params.safetensors"
OPT_FILE = "opt_state.safetensors"
META_FILE = "meta.json"


class CheckpointError(ValueError):
    """A checkpoint directory is missing, malformed, or does not match the expected structure."""


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns.

    ``params``: ``{module: {name: np.ndarray}}`` (Haiku layout). ``opt_state``: the optimizer pytree
    when a template was given, else the flat ``{key: np.ndarray}`` dict. ``step``: updates applied.
    """

    params: dict[str, dict[str, np.ndarray]]
    opt_state: Any
    step: int
    model_config: ModelConfig
    config_name: str | None
    data_seed: int
    meta: dict


def _key_str(entry) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    raise CheckpointError(f"unsupported pytree key {entry!r}")


def flatten_tree(tree) -> dict[str, np.ndarray]:
    """Pytree -> ``{"a/b/c": np.ndarray}`` with keys from the tree path (dict keys, attr names, indices).

    Raises ``CheckpointError`` if two leaves map to the same key.
    """
    flat: dict[str, np.ndarray] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        key = "/".join(_key_str(p) for p in path)
        if key in flat:
            raise CheckpointError(f"duplicate flattened key {key!r}")
        flat[key] = np.array(leaf, order="C")
    return flat


def unflatten_like(template, flat: dict[str, np.ndarray], what: str = "tree"):
    """Rebuild a pytree with ``template``'s structure from :func:`flatten_tree` output.

    ``template`` may hold arrays or ``jax.ShapeDtypeStruct``s. Raises ``CheckpointError`` naming the key
    for a missing/extra key or a shape/dtype mismatch.
    """
    paths, treedef = jax.tree_util.tree_flatten_with_path(template)
    leaves, seen = [], set()
    for path, ref in paths:
        key = "/".join(_key_str(p) for p in path)
        if key not in flat:
            raise CheckpointError(f"{what}: key {key!r} missing from checkpoint")
        arr = flat[key]
        if tuple(arr.shape) != tuple(ref.shape) or np.dtype(arr.dtype) != np.dtype(ref.dtype):
            raise CheckpointError(f"{what}: {key!r} is {arr.dtype}{list(arr.shape)}, "
                                  f"expected {np.dtype(ref.dtype)}{list(ref.shape)}")
        leaves.append(arr)
        seen.add(key)
    extra = sorted(set(flat) - seen)
    if extra:
        raise CheckpointError(f"{what}: unexpected keys in checkpoint, e.g. {extra[:3]}")
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(directory: str | os.PathLike, *, params, opt_state, step: int, model_config: ModelConfig,
                    data_seed: int, config_name: str | None = None, extra: dict | None = None) -> Path:
    """Write a checkpoint directory atomically (temp dir in the same parent, then rename).

    Args:
        directory: final checkpoint folder; replaced if it exists.
        params: Haiku params ``{module: {name: array}}`` (any array type, copied to host).
        opt_state: optax state pytree.
        step: optimizer updates applied so far (next batch index).
        model_config, config_name: model shape and its name in ``CONFIGS`` (may be None).
        data_seed: seed of :meth:`xgen_train.data.ShardLoader.batch_at`.
        extra: more JSON-able metadata (optimizer config, data selection, ...).
    Returns:
        The final ``Path``.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        pflat = {k: np.array(v, order="C") for k, v in flat_params(params).items()}
        tag = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "step": str(int(step))}
        safetensors.numpy.save_file(pflat, tmp / PARAMS_FILE, metadata={**tag, "content": "params"})
        safetensors.numpy.save_file(flatten_tree(opt_state), tmp / OPT_FILE, metadata={**tag, "content": "opt_state"})
        meta = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "step": int(step),
            "config_name": config_name, "model_config": model_config.to_dict(), "data_seed": int(data_seed),
            "files": {"params": PARAMS_FILE, "opt_state": OPT_FILE},
            "sha256": {PARAMS_FILE: _sha256(tmp / PARAMS_FILE), OPT_FILE: _sha256(tmp / OPT_FILE)},
            "extra": extra or {},
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        for name in (PARAMS_FILE, OPT_FILE, META_FILE):
            _fsync(tmp / name)
        if directory.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old-", dir=directory.parent))
            os.rename(directory, old / "ckpt")
            os.rename(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def load_checkpoint(directory: str | os.PathLike, opt_state_template=None, verify: bool = False) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`; the round trip is bit-exact.

    Args:
        directory: checkpoint folder.
        opt_state_template: optional pytree (e.g. ``optimizer.init(params)`` or its ``jax.eval_shape``)
            giving the optimizer-state structure; without it ``opt_state`` is the flat dict.
        verify: check the files' sha256 against ``meta.json``.
    Raises:
        CheckpointError: missing files, wrong format/version, sha256 mismatch, structure mismatch.
    """
    directory = Path(directory)
    meta_path = directory / META_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"{meta_path}: missing (not an xgen checkpoint)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{meta_path}: not valid JSON: {exc}") from exc
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{meta_path}: expected {FORMAT} v{FORMAT_VERSION}, got "
                              f"{meta.get('format')!r} v{meta.get('format_version')!r}")
    for name in (PARAMS_FILE, OPT_FILE):
        if not (directory / name).is_file():
            raise CheckpointError(f"{directory / name}: missing")
        if verify and _sha256(directory / name) != meta["sha256"][name]:
            raise CheckpointError(f"{directory / name}: sha256 differs from meta.json")
    try:
        params = unflat_params(safetensors.numpy.load_file(directory / PARAMS_FILE))
        opt_flat = safetensors.numpy.load_file(directory / OPT_FILE)
    except Exception as exc:  # safetensors raises its own error type for truncated or corrupt files
        raise CheckpointError(f"{directory}: cannot read the safetensors files ({exc}); the checkpoint is "
                              "damaged (run with verify=True / --verify to compare sha256)") from None
    opt_state = opt_flat if opt_state_template is None else unflatten_like(opt_state_template, opt_flat, "opt_state")
    return Checkpoint(params=params, opt_state=opt_state, step=int(meta["step"]),
                      model_config=ModelConfig.from_dict(meta["model_config"]),
                      config_name=meta.get("config_name"), data_seed=int(meta["data_seed"]), meta=meta)


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The ``step_*`` checkpoint with the highest step under ``root`` (ignores temp dirs), or None."""
    root = Path(root)
    if not root.is_dir():
        return None
    found = [p for p in root.glob("step_*") if (p / META_FILE).is_file()]
    return max(found, key=lambda p: int(p.name.split("_", 1)[1]), default=None)
