"""``TrainConfig``: every setting of a training run as one nested, JSON-able dataclass (SPEC §4, §5).

A run is described by six sections plus monitoring:

* :class:`ModelSection` -- which model and where its first parameters come from (config name, ``--init``,
  init seed, where a fresh init is drawn, the device mesh).
* :class:`DataSection` -- the shards, the sub-stage selection, the batch, the data-order seed, SFT epochs.
* :class:`OptimizerSection` -- Adam(W) moments, weight decay, clipping, peak learning rate.
* :class:`ScheduleSection` -- warm-up, cosine length and floor, the step cap.
* :class:`xgen_train.model.numerics.NumericsOptions` -- precision, kernels, chunked loss, accumulation, ...
* :class:`CheckpointSection` -- checkpoint cadence and retention.
* :class:`MonitorSection` -- logging, validation, spike rule, plot, progress bar, MFU peak.

Field names are unique across sections, so a flat ``name=value`` view (:meth:`TrainConfig.from_flat`,
:meth:`TrainConfig.to_flat`) is derived from the dataclasses, not kept by hand: ``xgen train`` options carry
the same names, and ``--resume`` reads the stored config back from ``OUT/run.json`` (:func:`load_run_config`).

Objective defaults. ``None`` in ``lr``, ``b2``, ``weight_decay``, ``warmup``, ``epochs`` and the batch means
"the objective's default", fixed by :meth:`TrainConfig.resolved` once the shards tell the objective:
pre-training follows SPEC §4 (AdamW 0.9/0.95, weight decay 0.1, peak 3e-4, 2,000 warm-up updates, 2,048
tokens per update unless a batch is given, one pass); SFT follows SPEC §5 (Adam 0.9/0.99, peak 2e-5, cosine
to 10%, batch 128 sequences, 3 epochs; Choice: no weight decay, as SPEC §5 names Adam, and no warm-up, as it
names none). ``run.json`` stores the resolved config, so a resume never depends on these tables.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field, fields
from typing import Any

from xgen_data.errors import DamagedDataError, InputError
from xgen_train.model.numerics import NumericsOptions

__all__ = ["CheckpointSection", "DataSection", "ModelSection", "MonitorSection", "OBJECTIVE_DEFAULTS",
           "OptimizerSection", "RunConfigError", "ScheduleSection", "TrainConfig", "load_run_config"]


class RunConfigError(DamagedDataError):
    """A stored run configuration cannot be read back (names the file and the problem)."""


@dataclass(frozen=True)
class ModelSection:
    """Model shape and its starting parameters.

    Attributes:
        config_name: key of :data:`xgen_train.model.config.CONFIGS`, or ``"init"``: the ``init`` model's own
            config (:func:`xgen_train.loop.checkpoint.resolve_model_config`).
        init: start from these params (run/checkpoint folder or Hugging Face folder); None: random init.
        init_seed: seed of a random init (None: the data seed).
        init_on: ``auto``/``host``/``device``: where a random init is drawn (not part of the trajectory).
        mesh: device mesh spec such as ``data=2,fsdp=2`` (None: every device on ``data``).
    """

    config_name: str = "tiny"
    init: str | None = None
    init_seed: int | None = None
    init_on: str = "auto"
    mesh: str | None = None


@dataclass(frozen=True)
class DataSection:
    """What the run reads, in which order, how many sequences per update.

    Attributes:
        shards_dir: an ``xgen-shards`` (pre-training) or ``xgen-sft-shards`` (SFT) folder.
        stage, substage: train only these (pre-training curriculum selection).
        budget_fraction: train on this fraction of every sub-stage's budget, in ``(0, 1]``.
        batch_tokens, batch_size: tokens or sequences per update (at most one; both None: objective default).
        seed: data-order seed: batch = f(seed, step), a fresh permutation per epoch.
        epochs: passes over the train rows (None: 1 for pre-training, 3 for SFT).
        verify: shard sha256 policy of the loader (None: lazily, True: up front, False: off).
    """

    shards_dir: str | None = None
    stage: str | None = None
    substage: str | None = None
    budget_fraction: float = 1.0
    batch_tokens: int | None = None
    batch_size: int | None = None
    seed: int = 0
    epochs: int | None = None
    verify: bool | None = None


@dataclass(frozen=True)
class OptimizerSection:
    """Adam(W) + global-norm clipping (:class:`xgen_train.loop.optimizer.OptimizerConfig`); None: objective default."""

    lr: float | None = None
    b1: float = 0.9
    b2: float | None = None
    weight_decay: float | None = None
    clip_norm: float = 1.0


@dataclass(frozen=True)
class ScheduleSection:
    """Learning-rate schedule and stop.

    Attributes:
        warmup: linear warm-up updates (None: objective default).
        total_steps: cosine length (None: the plan's updates).
        final_lr_ratio: the cosine ends at this fraction of the peak (SPEC §4, §5: 0.1).
        steps: stop after this many updates in total (a cap; the schedule stays the plan's).
    """

    warmup: int | None = None
    total_steps: int | None = None
    final_lr_ratio: float = 0.1
    steps: int | None = None


@dataclass(frozen=True)
class CheckpointSection:
    """``checkpoint_every`` updates (0: only at the end and on a signal); keep the newest ``keep_checkpoints``."""

    checkpoint_every: int = 0
    keep_checkpoints: int = 3


@dataclass(frozen=True)
class MonitorSection:
    """What the loop reports: metrics cadence, validation, spike rule (SPEC §4: 128 updates, 6 std), outputs."""

    log_every: int = 10
    eval_every: int = 0
    eval_sequences: int = 64
    spike_window: int = 128
    spike_std: float = 6.0
    progress: bool = True
    plot: bool = True
    peak_flops: float | None = None
    max_skipped: int = 10  # stop (ProblemFound) after this many skipped updates in a row (loop/guards.py)


#: Defaults of the ``None`` fields per objective (module doc): SPEC §4 for ``pretrain``, SPEC §5 for ``sft``.
OBJECTIVE_DEFAULTS: dict[str, dict[str, Any]] = {
    "pretrain": {"lr": 3e-4, "b2": 0.95, "weight_decay": 0.1, "warmup": 2000, "epochs": 1,
                 "batch_tokens": 2048},
    "sft": {"lr": 2e-5, "b2": 0.99, "weight_decay": 0.0, "warmup": 0, "epochs": 3, "batch_size": 128},
}

_SECTIONS = {"model": ModelSection, "data": DataSection, "optimizer": OptimizerSection,
             "schedule": ScheduleSection, "numerics": NumericsOptions, "checkpointing": CheckpointSection,
             "monitor": MonitorSection}


@dataclass(frozen=True)
class TrainConfig:
    """All settings of a run (module doc); ``to_dict`` is what ``run.json`` stores under ``"config"``."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    numerics: NumericsOptions = field(default_factory=NumericsOptions)
    checkpointing: CheckpointSection = field(default_factory=CheckpointSection)
    monitor: MonitorSection = field(default_factory=MonitorSection)

    @staticmethod
    def flat_names() -> dict[str, str]:
        """``field name -> section name`` for every leaf setting (names are unique across sections)."""
        return {f.name: sec for sec, cls in _SECTIONS.items() for f in fields(cls)}

    @classmethod
    def from_flat(cls, **values) -> "TrainConfig":
        """A config from flat ``name=value`` settings (defaults elsewhere). Raises TypeError on an unknown name."""
        return cls().replace(**values)

    def replace(self, **values) -> "TrainConfig":
        """Copy with flat ``name=value`` settings changed. Raises TypeError naming an unknown setting."""
        where = self.flat_names()
        unknown = sorted(set(values) - set(where))
        if unknown:
            raise TypeError(f"unknown training setting(s): {', '.join(unknown)}")
        by_section: dict[str, dict] = {}
        for name, value in values.items():
            by_section.setdefault(where[name], {})[name] = value
        return dataclasses.replace(self, **{sec: dataclasses.replace(getattr(self, sec), **kv)
                                            for sec, kv in by_section.items()})

    def to_flat(self) -> dict[str, Any]:
        """``{name: value}`` over every section (the inverse of :meth:`from_flat`)."""
        return {k: v for sec in _SECTIONS for k, v in dataclasses.asdict(getattr(self, sec)).items()}

    def to_dict(self) -> dict[str, dict]:
        """Nested plain-JSON form ``{section: {name: value}}``."""
        return {sec: dataclasses.asdict(getattr(self, sec)) for sec in _SECTIONS}

    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> "TrainConfig":
        """Inverse of :meth:`to_dict`; missing sections or fields take their defaults (a newer xgen added them).

        Raises:
            RunConfigError: naming ``where``, for a non-object section or an unknown field.
        """
        if not isinstance(d, dict):
            raise RunConfigError(f"{where}: the stored config is not a JSON object")
        unknown = sorted(set(d) - set(_SECTIONS))
        if unknown:
            raise RunConfigError(f"{where}: unknown config section(s) {', '.join(unknown)}")
        flat = {}
        for sec, values in d.items():
            if not isinstance(values, dict):
                raise RunConfigError(f"{where}: config section {sec!r} is not a JSON object")
            names = {f.name for f in fields(_SECTIONS[sec])}
            bad = sorted(set(values) - names)
            if bad:
                raise RunConfigError(f"{where}: unknown setting(s) {', '.join(bad)} in config section {sec!r}")
            flat.update(values)
        return cls.from_flat(**flat)

    def resolved(self, objective: str) -> "TrainConfig":
        """Copy with every ``None`` objective default filled (:data:`OBJECTIVE_DEFAULTS`).

        The batch default applies only when neither ``batch_tokens`` nor ``batch_size`` is set.
        Raises ValueError for an unknown objective.
        """
        if objective not in OBJECTIVE_DEFAULTS:
            raise InputError(f"objective must be one of {', '.join(OBJECTIVE_DEFAULTS)}, got {objective!r}")
        flat = self.to_flat()
        fill = {k: v for k, v in OBJECTIVE_DEFAULTS[objective].items()
                if k not in ("batch_tokens", "batch_size") and flat[k] is None}
        if flat["batch_tokens"] is None and flat["batch_size"] is None:
            fill.update({k: v for k, v in OBJECTIVE_DEFAULTS[objective].items() if k in ("batch_tokens", "batch_size")})
        return self.replace(**fill)


def load_run_config(out_dir: str | os.PathLike) -> TrainConfig | None:
    """The :class:`TrainConfig` stored in ``out_dir/run.json`` (None when there is no run.json).

    Raises:
        RunConfigError: naming the file, for invalid JSON, a config that cannot be read back, or a run.json of
            the 0.x format (no ``"config"`` key; the message says how to continue from its params).
    """
    path = os.path.join(os.fspath(out_dir), "run.json")
    try:
        with open(path, encoding="utf-8") as fh:
            record = json.load(fh)
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise RunConfigError(f"{path}: not valid JSON ({exc}); cannot resume from it") from None
    if not isinstance(record, dict):
        raise RunConfigError(f"{path}: not a JSON object; cannot resume from it")
    if "config" not in record:
        raise RunConfigError(f"{path}: written by an older xgen (0.x) that stored no run config, so --resume cannot "
                             "continue it; start a new run from its latest params: `xgen train --init "
                             f"{os.fspath(out_dir)} --out NEW ...`")
    return TrainConfig.from_dict(record["config"], where=path)
