"""Multi-host start: ``jax.distributed.initialize`` when the environment asks for it, and who writes files.

JAX runs one Python process per host (multi-controller SPMD: every process runs the same program, each
feeding its own devices; see the JAX guide "Multi-host and multi-process environments"). Before any device
is touched, the processes must find each other: :func:`maybe_initialize` calls
``jax.distributed.initialize()`` (no arguments: JAX reads ``JAX_COORDINATOR_ADDRESS`` and detects Cloud TPU
pod slices, Slurm and Open MPI itself) when :func:`distributed_reason` finds one of:

* ``XGEN_DISTRIBUTED=1`` (explicit; ``XGEN_DISTRIBUTED=0`` turns every detection below off);
* ``JAX_COORDINATOR_ADDRESS`` (then ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` give the other two
  arguments, unless a cluster environment supplies them);
* a Slurm job step with more than one task (``SLURM_JOB_ID`` and ``SLURM_NTASKS`` > 1);
* an Open MPI launch with more than one rank (``OMPI_COMM_WORLD_SIZE`` > 1);
* a multi-host TPU slice that names its workers (``TPU_WORKER_HOSTNAMES`` / ``TPU_PROCESS_ADDRESSES`` with
  more than one host, as on GKE). A TPU VM pod slice started with ``gcloud ... ssh --worker=all`` does
  not always set these: pass ``XGEN_DISTRIBUTED=1`` there (docs/training-at-scale.md).

Single-process runs (a laptop, one GPU, one TPU VM host) need none of this. Only process 0 writes the run's
files (metrics, plots, summary, run.json, checkpoint sidecars): :func:`is_main_process`.
"""
from __future__ import annotations

import os
from typing import Mapping

from xgen_data.errors import ProblemFound

__all__ = ["distributed_reason", "is_main_process", "maybe_initialize", "process_info"]


def _int(env: Mapping[str, str], key: str) -> int:
    try:
        return int(env.get(key, "") or 0)
    except ValueError:
        return 0


def distributed_reason(env: Mapping[str, str] | None = None) -> str | None:
    """Why this process should join a multi-process job (the variable that says so), or None.

    Pure function of ``env`` (default ``os.environ``); see the module doc for the rules.
    """
    env = os.environ if env is None else env
    flag = env.get("XGEN_DISTRIBUTED", "").strip().lower()
    if flag in ("0", "false", "no", "off"):
        return None
    if flag in ("1", "true", "yes", "on"):
        return "XGEN_DISTRIBUTED=1"
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return "JAX_COORDINATOR_ADDRESS"
    if env.get("SLURM_JOB_ID") and _int(env, "SLURM_NTASKS") > 1:
        return "SLURM_NTASKS>1"
    if _int(env, "OMPI_COMM_WORLD_SIZE") > 1:
        return "OMPI_COMM_WORLD_SIZE>1"
    for key in ("TPU_PROCESS_ADDRESSES", "TPU_WORKER_HOSTNAMES"):
        if len([h for h in env.get(key, "").split(",") if h.strip()]) > 1:
            return key
    return None


_STARTED: dict = {}


def maybe_initialize(env: Mapping[str, str] | None = None) -> str | None:
    """Call ``jax.distributed.initialize()`` once if :func:`distributed_reason` says so; return the reason.

    Must run before any JAX device use in the process (``xgen train`` calls it first thing). Idempotent.
    Raises:
        RuntimeError: the initialisation failed (the message names the reason and JAX's error), e.g. the
            backend was already in use or the coordinator could not be reached.
    """
    env = os.environ if env is None else env
    reason = distributed_reason(env)
    if reason is None or _STARTED:
        return _STARTED.get("reason", reason if _STARTED else None)
    import jax

    kwargs = {}
    if env.get("JAX_NUM_PROCESSES"):
        kwargs["num_processes"] = int(env["JAX_NUM_PROCESSES"])
    if env.get("JAX_PROCESS_ID"):
        kwargs["process_id"] = int(env["JAX_PROCESS_ID"])
    try:
        if not jax.distributed.is_initialized():
            jax.distributed.initialize(**kwargs)
    except Exception as exc:
        raise ProblemFound(f"multi-host start ({reason}): jax.distributed.initialize failed: {exc}") from exc
    _STARTED["reason"] = reason
    return reason


def process_info() -> dict:
    """``{"process_index", "process_count", "device_count", "local_device_count", "device_kind", "platform",
    "distributed"}`` of this process (recorded in ``run.json``)."""
    import jax

    dev = jax.devices()[0]
    return {"process_index": jax.process_index(), "process_count": jax.process_count(),
            "device_count": jax.device_count(), "local_device_count": jax.local_device_count(),
            "device_kind": dev.device_kind, "platform": dev.platform, "distributed": _STARTED.get("reason")}


def is_main_process() -> bool:
    """True on process 0 (the one that writes the run's files)."""
    import jax

    return jax.process_index() == 0
