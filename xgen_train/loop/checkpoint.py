"""Training checkpoints: orbax-checkpoint directories plus an xgen sha256 sidecar (SPEC §4 carry-over of state).

A run keeps its checkpoints under ``RUN/checkpoints/``; each is one directory, written by
``orbax.checkpoint.CheckpointManager`` (orbax's commit protocol: the step is written under a temporary name
and renamed into place once complete, then ``commit_success.txt`` is written)::

    RUN/checkpoints/step_00000200/
      params/          orbax StandardSave of the Haiku params {module: {name: float32 array}}
      opt_state/       orbax StandardSave of the optax state pytree
      meta/metadata    JSON (orbax JsonSave): see :func:`make_meta` ("step", "position", "run", ...)
      _CHECKPOINT_METADATA, commit_success.txt   (orbax)
      xgen-sha256.json sidecar written *after* orbax finalised the step: {"format": "xgen-checkpoint-sha256",
                       "format_version": 1, "step": N, "files": {relative path: {"sha256", "bytes"}}}

Sharded arrays (a run over a device mesh, :mod:`xgen_train.scale.sharding`) are saved as they are: orbax writes
each array once (tensorstore/OCDBT, every process writing the shards it owns) with its global shape, so a
checkpoint does not depend on the mesh it was saved under. :func:`load_checkpoint` restores it under
*any* mesh (``shardings=``: each array is read straight into the target layout, e.g. saved under
``data=8``, restored under ``fsdp=4,tensor=2``) or onto one device as numpy arrays (the default; export,
eval and ``--init`` use that). Multi-host: every process calls :meth:`CheckpointStore.save` (orbax
coordinates them; the folder must be on a file system all hosts share), and only process 0 writes the
sidecar and prunes old checkpoints, after which all processes wait for each other.

``step`` = optimizer updates applied, i.e. the next update is number ``step``. Integrity: every load checks
every file against the sidecar (a flipped bit or a truncated file is a :class:`CheckpointError` naming the
file), and a step directory without a sidecar (a save interrupted between orbax's commit and the sidecar)
is never loaded: :func:`latest_checkpoint` skips it, a direct load refuses it.

Public helpers for other modules: :func:`load_params` (a run or checkpoint folder -> ``(ModelConfig,
params)``); a Hugging Face folder is read by :func:`xgen_train.export.hf.load_init`, never here.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xgen_data.errors import DamagedDataError, InputError, ProblemFound
from xgen_data.store import fsutil
from xgen_train.model.config import ModelConfig, get_config

__all__ = ["Checkpoint", "CheckpointError", "CheckpointStore", "SIDECAR", "checkpoint_dirs", "latest_checkpoint",
           "checkpoint_source", "load_checkpoint", "load_params", "read_meta", "resolve_checkpoint",
           "verify_checkpoint"]

FORMAT = "xgen-checkpoint"
FORMAT_VERSION = 2
SIDECAR = "xgen-sha256.json"
SIDECAR_FORMAT = "xgen-checkpoint-sha256"
_STEP_RE = re.compile(r"^step_(\d+)$")


class CheckpointError(DamagedDataError):
    """A checkpoint is missing, corrupt (sha256/size mismatch), incomplete or does not fit the run."""


class CheckpointDiskFull(ProblemFound):
    """The disk filled up while a checkpoint was saved (exit 1); the partial save is removed."""


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` or an exception in its chain is a full disk (ENOSPC, or orbax / TensorStore's
    ``RESOURCE_EXHAUSTED`` / "No space left on device" wrapped in another type)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "RESOURCE_EXHAUSTED" in str(exc) or "No space left on device" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class _HeldLogs(logging.Filter):
    """While active, hold the records orbax logs through absl (tracebacks of its writer threads); ``replay``
    hands them on, and a save that fails for a full disk drops them: its one error says what happened."""

    LOGGERS = ("absl",)

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.records.append(record)
        return False

    def __enter__(self) -> "_HeldLogs":
        for name in self.LOGGERS:
            logging.getLogger(name).addFilter(self)
        return self

    def __exit__(self, *exc) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).removeFilter(self)

    def replay(self) -> None:
        records, self.records = self.records, []
        for r in records:
            logging.getLogger(r.name).handle(r)


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns.

    ``params``: ``{module: {name: np.ndarray float32}}`` (Haiku layout), or global ``jax.Array``s laid out
    as asked when loaded with ``shardings``. ``opt_state``: the optimizer pytree (structure of the template;
    None when no template was given), numpy or sharded like ``params``. ``step``: updates applied. ``meta``: the
    JSON written by the trainer (:func:`make_meta`). ``path``: the step directory.
    """

    params: dict[str, dict[str, np.ndarray]]
    opt_state: Any
    step: int
    model_config: ModelConfig
    meta: dict
    path: Path


def _ocp():
    import orbax.checkpoint as ocp  # imported lazily: heavy, and only training needs it

    return ocp


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != SIDECAR)


def write_sidecar(directory: str | os.PathLike, step: int) -> Path:
    """Record sha256 and size of every file of a finalised checkpoint in ``directory/xgen-sha256.json``."""
    directory = Path(directory)
    files = {p.relative_to(directory).as_posix(): {"sha256": fsutil.sha256_file(p), "bytes": p.stat().st_size}
             for p in _files(directory)}
    path = directory / SIDECAR
    fsutil.write_json(str(path), {"format": SIDECAR_FORMAT, "format_version": 1, "step": int(step), "files": files})
    return path


def verify_checkpoint(directory: str | os.PathLike) -> dict:
    """Check every file of a checkpoint against its sidecar; return the sidecar dict.

    Raises:
        CheckpointError: naming the file: no sidecar (incomplete save), unreadable sidecar, a listed file
            missing, a size or sha256 mismatch, or a file the sidecar does not list.
    """
    directory = Path(directory)
    side = directory / SIDECAR
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a checkpoint directory")
    if not side.is_file():
        raise CheckpointError(f"{side}: missing; the checkpoint was not completed (interrupted save?) or is not an "
                              "xgen checkpoint; refusing to load it")
    try:
        record = json.loads(side.read_text(encoding="utf-8"))
        files = record["files"]
        if record.get("format") != SIDECAR_FORMAT or not isinstance(files, dict):
            raise ValueError("wrong format")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{side}: unreadable integrity record ({exc})") from None
    for rel, want in sorted(files.items()):
        p = directory / rel
        if not p.is_file():
            raise CheckpointError(f"{p}: missing (listed in {SIDECAR})")
        size = p.stat().st_size
        if size != want.get("bytes"):
            raise CheckpointError(f"{p}: {size} bytes, {SIDECAR} says {want.get('bytes')} (truncated or damaged)")
        if fsutil.sha256_file(p) != want.get("sha256"):
            raise CheckpointError(f"{p}: sha256 differs from {SIDECAR} (corrupt checkpoint file)")
    extra = [p.relative_to(directory).as_posix() for p in _files(directory)
             if p.relative_to(directory).as_posix() not in files]
    if extra:
        raise CheckpointError(f"{directory / extra[0]}: not listed in {SIDECAR} (checkpoint altered after saving)")
    return record


def checkpoint_dirs(root: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, path)`` of the ``step_*`` directories under ``root``, by step (complete or not)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_RE.match(p.name))]
    return sorted(found)


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The complete (sidecar present) ``step_*`` checkpoint with the highest step under ``root``, or None.

    Step directories without a sidecar (an interrupted save) are skipped; their contents are not trusted.
    """
    done = [p for _, p in checkpoint_dirs(root) if (p / SIDECAR).is_file()]
    return done[-1] if done else None


def read_meta(directory: str | os.PathLike) -> dict:
    """The trainer's JSON metadata of a checkpoint (``meta/metadata``), without verifying the arrays."""
    path = Path(directory) / "meta" / "metadata"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing (not an xgen checkpoint)") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        got = (meta.get("format"), meta.get("format_version")) if isinstance(meta, dict) else meta
        raise CheckpointError(f"{path}: expected {FORMAT} v{FORMAT_VERSION}, got {got!r}")
    return meta


def _to_numpy(tree):
    import jax

    return jax.tree.map(lambda x: np.asarray(x), tree)


def _targets(template, shardings):
    """ShapeDtypeStructs of ``template`` placed by ``shardings`` (a matching tree), or on one local device."""
    import jax

    if shardings is None:
        one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one), template)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), template, shardings)


def load_checkpoint(directory: str | os.PathLike, opt_state_template=None, verify: bool = True,
                    shardings: tuple[Any, Any] | None = None) -> Checkpoint:
    """Verify (sidecar sha256) and read a checkpoint directory; the round trip is bit-exact.

    Args:
        directory: a ``step_*`` checkpoint directory.
        opt_state_template: pytree of arrays or ``jax.ShapeDtypeStruct`` (e.g. ``jax.eval_shape(lambda:
            optimizer.init(params))``) giving the optimizer-state structure; None skips the optimizer state.
        verify: check every file against the sidecar first (only skip it right after
            :func:`verify_checkpoint` on the same directory).
        shardings: ``(param_shardings, opt_state_shardings)`` (trees of ``jax.sharding.Sharding`` like the
            params / the template, e.g. :func:`xgen_train.scale.sharding.param_shardings`): restore straight into
            that layout as global ``jax.Array``s, whatever mesh the checkpoint was saved under. Default: every
            array onto one local device, returned as numpy.
    Raises:
        CheckpointError: corrupt or incomplete checkpoint, bad metadata, or arrays that do not fit
            the model config / template (message names the file or key).
    """
    import jax

    directory = Path(directory).resolve()
    if verify:
        verify_checkpoint(directory)
    meta = read_meta(directory)
    cfg = ModelConfig.from_dict(meta["run"]["model_config"])
    from xgen_train.model.model import init_params

    ocp = _ocp()
    ckptr = ocp.StandardCheckpointer()
    params_template = jax.eval_shape(lambda: init_params(cfg, 0))
    p_sh, s_sh = shardings if shardings is not None else (None, None)
    try:
        params = ckptr.restore(directory / "params", _targets(params_template, p_sh))
        opt_state = None
        if opt_state_template is not None:
            tmpl = jax.eval_shape(lambda t: t, opt_state_template)
            opt_state = ckptr.restore(directory / "opt_state", _targets(tmpl, s_sh))
    except Exception as exc:  # orbax/tensorstore raise many types for a structure or shape mismatch
        raise CheckpointError(f"{directory}: arrays do not match the expected structure "
                              f"(model {cfg} / optimizer state): {str(exc).splitlines()[0][:300]}") from None
    if shardings is None:
        params, opt_state = _to_numpy(params), (_to_numpy(opt_state) if opt_state is not None else None)
    return Checkpoint(params=params, opt_state=opt_state, step=int(meta["step"]), model_config=cfg,
                      meta=meta, path=directory)


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint directory ``path`` names: ``path`` itself when it is a ``step_*`` checkpoint, else the
    latest complete checkpoint of the run directory ``path`` (under ``checkpoints/``, or directly in it).

    Raises:
        CheckpointError: neither (the message names what was looked for).
    """
    p = Path(path)
    if (p / "meta").is_dir() or _STEP_RE.match(p.name):
        return p
    for root in (p / "checkpoints", p):
        if (latest := latest_checkpoint(root)) is not None:
            return latest
    hint = "; a Hugging Face folder: `xgen import hf` makes a run of it" if is_hf_folder(p) else ""
    raise CheckpointError(f"{p}: neither a checkpoint directory nor a run directory with complete checkpoints "
                          f"(checkpoints/step_*/ with xgen-sha256.json){hint}")


def checkpoint_source(path: str | os.PathLike) -> tuple[Path | None, int | None]:
    """``(checkpoint directory, step)`` that :func:`load_params` reads for ``path``, for provenance records
    (export notes, evaluation reports): best effort, ``(None, None)`` when ``path`` holds no complete
    checkpoint or its meta is unreadable. Never raises for a missing or damaged checkpoint."""
    try:
        ckpt = resolve_checkpoint(path)
        return ckpt, int(read_meta(ckpt)["step"])
    except (CheckpointError, KeyError, TypeError, ValueError):
        return None, None


def load_params(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, dict[str, np.ndarray]]]:
    """Model config and params of a run directory (its latest complete checkpoint) or a checkpoint directory.

    Returns ``(ModelConfig, params)``, params in the Haiku layout of :mod:`xgen_train.model.model`
    (``{module: {name: float32 np.ndarray}}``; see ``flat_params``/``hf_param_names`` to rename them).
    Every file is verified against the sidecar first.
    Raises:
        CheckpointError: no checkpoint found, corrupt or incompatible checkpoint (names the file).
    """
    ck = load_checkpoint(resolve_checkpoint(path))
    return ck.model_config, ck.params


def is_hf_folder(path: str | os.PathLike) -> bool:
    """True when ``path`` looks like a Hugging Face model folder (``config.json`` + ``model.safetensors``)."""
    p = Path(path)
    return (p / "config.json").is_file() and (p / "model.safetensors").is_file()


#: ``xgen train --config init``: train the ``--init`` model's own config (e.g. an imported one no name gives).
INIT_CONFIG = "init"


def checkpoint_model_config(path: str | os.PathLike) -> ModelConfig:
    """The model config of a run or checkpoint folder without loading its weights (the latest checkpoint's
    meta). A Hugging Face folder is read by :func:`xgen_train.export.hf.init_model_config`, never here.

    Raises:
        CheckpointError: no checkpoint, or its meta holds no model config.
    """
    ckpt = resolve_checkpoint(path)
    try:
        return ModelConfig.from_dict(read_meta(ckpt)["run"]["model_config"])
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{ckpt}: its meta holds no model config ({exc})") from None


def resolve_model_config(config_name: str, init: str | os.PathLike | None, init_config=None) -> ModelConfig:
    """The config ``xgen train --config NAME`` trains: a named one (:data:`xgen_train.model.config.CONFIGS`),
    or with :data:`INIT_CONFIG` the ``--init`` model's own, read by ``init_config(init)`` (default
    :func:`checkpoint_model_config`; ``xgen train`` passes :func:`xgen_train.export.hf.init_model_config`).

    Raises:
        InputError: :data:`INIT_CONFIG` without ``init``. KeyError: an unknown name (lists the known ones).
    """
    if config_name == INIT_CONFIG:
        if init is None:
            raise InputError(f"--config {INIT_CONFIG} trains the --init model's own config: give --init too")
        return (init_config or checkpoint_model_config)(init)
    return get_config(config_name)


def make_meta(step: int, position: dict, run: dict, extra: dict | None = None) -> dict:
    """The JSON stored with a checkpoint: format tag, ``step``, data ``position``, ``run`` config, ``extra``."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "step": int(step), "position": position,
            "run": run, "extra": extra or {}}


def _process_index() -> int:
    import jax

    return jax.process_index()


def _sync_processes(name: str) -> None:
    """Barrier over all processes of a multi-host job (nothing to do with one process)."""
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


class CheckpointStore:
    """Saves training checkpoints under ``root`` with orbax's ``CheckpointManager``; keeps the last ``keep``.

    ``save`` is synchronous: when it returns, orbax has committed the step and the sidecar is written.
    Use as a context manager (or call :meth:`close`).
    """

    def __init__(self, root: str | os.PathLike, keep: int = 3) -> None:
        if keep < 1:
            raise InputError(f"keep must be >= 1, got {keep}")
        ocp = _ocp()
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        opts = ocp.CheckpointManagerOptions(max_to_keep=None, step_prefix="step", step_format_fixed_length=8,
                                            enable_async_checkpointing=False, create=True)
        self._mgr = ocp.CheckpointManager(self.root, options=opts)

    def save(self, step: int, params, opt_state, meta: dict) -> Path:
        """Write checkpoint ``step`` (params, optimizer state, JSON meta) and its sidecar; prune old ones.

        Raises:
            CheckpointDiskFull: the disk filled up during the save: one message instead of orbax's
                tracebacks, the partial save removed, earlier checkpoints untouched.
        """
        ocp = _ocp()
        target = self.root / f"step_{step:08d}"
        if target.exists():  # e.g. an incomplete save of this step from a killed process
            shutil.rmtree(target)
            self._mgr.reload()
        held = _HeldLogs()
        try:
            with held:
                self._mgr.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                                             opt_state=ocp.args.StandardSave(opt_state),
                                                             meta=ocp.args.JsonSave(meta)), force=True)
                self._mgr.wait_until_finished()
                if _process_index() == 0:  # one writer for the sidecar and the pruning; the others wait
                    write_sidecar(target, step)
        except Exception as exc:
            if not disk_full(exc):
                held.replay()
                raise
            self._remove_partial(step)
            latest = latest_checkpoint(self.root)
            raise CheckpointDiskFull(f"disk full while saving checkpoint step {step} under {self.root}: the partial "
                                     "save was removed and earlier checkpoints are intact (latest: "
                                     f"{latest.name if latest else 'none'}); free disk space, then continue with "
                                     "--resume") from exc
        held.replay()
        if _process_index() == 0:
            self._prune()
        _sync_processes(f"xgen_checkpoint_{step}")
        return target

    def _remove_partial(self, step: int) -> None:
        """Remove what a failed save of ``step`` left (orbax's temporary folder, a folder without sidecar)."""
        if _process_index() == 0:
            for p in self.root.glob(f"step_{step:08d}*"):
                if p.is_dir() and not (p / SIDECAR).is_file():
                    shutil.rmtree(p, ignore_errors=True)
        with contextlib.suppress(Exception):
            self._mgr.reload()

    def _prune(self) -> None:
        done = [p for _, p in checkpoint_dirs(self.root) if (p / SIDECAR).is_file()]
        for p in done[:-self.keep]:
            shutil.rmtree(p)
        if len(done) > self.keep:
            self._mgr.reload()

    def close(self) -> None:
        self._mgr.close()

    def __enter__(self) -> "CheckpointStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
