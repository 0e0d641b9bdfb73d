"""Settings of every DuckDB connection the product opens: memory limit, spill folder and its cap."""
from __future__ import annotations

import os
import re
import shutil
import tempfile

from xgen_data.errors import InputError
from xgen_data.store import fsutil

#: DuckDB's memory limit for every connection the product opens (views, reports, the mixture build, dedup's
#: phase 2), unless ``XGEN_DUCKDB_MEMORY`` says otherwise (a DuckDB size: ``512MB``, ``4GB``). Beyond it DuckDB
#: spills joins, sorts and aggregates to a private temporary folder, so a query over a corpus of any size holds
#: about this much plus its result. An operator that cannot spill and needs more fails with DuckDB's
#: out-of-memory error; raise the limit then.
DEFAULT_MEMORY_LIMIT = "512MB"


def _size_env(name: str, default: str | None) -> str | None:
    value = os.environ.get(name, "").strip() or default
    if value is not None and not re.fullmatch(r"\d+(\.\d+)?\s*(B|KB|KiB|MB|MiB|GB|GiB|TB|TiB)", value,
                                              flags=re.IGNORECASE):
        raise InputError(f"{name}={value!r} is not a size such as 512MB or 4GB")
    return value


def memory_limit() -> str:
    """The DuckDB memory limit in force: ``XGEN_DUCKDB_MEMORY`` or :data:`DEFAULT_MEMORY_LIMIT`.

    Raises:
        ValueError: ``XGEN_DUCKDB_MEMORY`` is not a size such as ``512MB`` or ``4GB``.
    """
    return _size_env("XGEN_DUCKDB_MEMORY", DEFAULT_MEMORY_LIMIT)


#: Default cap of a connection's spill folder: at most this, and at most :data:`SPILL_FREE_FRACTION` of the free
#: disk where it lies (so the default can never fill a disk), unless ``XGEN_DUCKDB_SPILL`` says otherwise.
DEFAULT_SPILL_CAP = "20GB"
SPILL_FREE_FRACTION = 0.5
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
          "tib": 2**40}


def size_bytes(text: str) -> int:
    """Bytes of a DuckDB size such as ``512MB`` (KB, MB, GB, TB: powers of 1000; KiB, MiB, GiB, TiB: of 1024)."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([A-Za-z]+)", text.strip())
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def spill_cap(folder: str) -> int:
    """The spill cap in bytes for a spill folder: ``XGEN_DUCKDB_SPILL``, else the smaller of
    :data:`DEFAULT_SPILL_CAP` and :data:`SPILL_FREE_FRACTION` of the disk free at ``folder`` (or the nearest
    folder above it that exists). :func:`xgen_data.store.query_guard.guard` enforces it.

    Raises:
        ValueError: ``XGEN_DUCKDB_SPILL`` is not a size.
    """
    if given := _size_env("XGEN_DUCKDB_SPILL", None):
        return size_bytes(given)
    probe = os.path.abspath(folder)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    return min(size_bytes(DEFAULT_SPILL_CAP), int(shutil.disk_usage(probe).free * SPILL_FREE_FRACTION))


def duckdb_config(temp_directory: str, memory: str | None = None) -> dict:
    """DuckDB settings of every connection the product opens: :func:`memory_limit` (or ``memory``), the spill
    folder, and its cap (:func:`spill_cap`; DuckDB stores it but does not enforce it for every operator, so
    queries run under :func:`xgen_data.store.query_guard.guard` with the same cap).

    Raises:
        ValueError: ``XGEN_DUCKDB_MEMORY`` or ``XGEN_DUCKDB_SPILL`` is not a size.
    """
    return {"memory_limit": memory or memory_limit(), "temp_directory": temp_directory,
            "max_temp_directory_size": f"{spill_cap(temp_directory)}B"}


_SPILL_PREFIX = "xgen-sql-"
_SWEPT: list[bool] = []


def spill_dir() -> str:
    """This process's private DuckDB spill folder (under the system temporary folder; DuckDB removes its files
    when the connection closes). The first call of a process deletes the folders of processes that are gone
    (a query killed with ``kill -9`` leaves its spill files, up to gigabytes, behind)."""
    tmp = tempfile.gettempdir()
    if not _SWEPT:
        _SWEPT.append(True)
        _sweep_spill_dirs(tmp)
    return os.path.join(tmp, f"{_SPILL_PREFIX}{os.getpid()}")


def _sweep_spill_dirs(tmp: str) -> None:
    for name in os.listdir(tmp) if os.path.isdir(tmp) else []:
        pid = name[len(_SPILL_PREFIX):]
        if (name.startswith(_SPILL_PREFIX) and pid.isdigit() and int(pid) != os.getpid()
                and not fsutil.pid_alive(int(pid))):
            shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)
