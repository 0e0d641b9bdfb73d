"""Settings of every DuckDB connection the product opens: memory limit, spill folder and its cap."""
from __future__ import annotations

import os
import re
import shutil
import tempfile

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
        raise ValueError(f"{name}={value!r} is not a size such as 512MB or 4GB")
    return value


def memory_limit() -> str:
    """The DuckDB memory limit in force: ``XGEN_DUCKDB_MEMORY`` or :data:`DEFAULT_MEMORY_LIMIT`.

    Raises:
        ValueError: ``XGEN_DUCKDB_MEMORY`` is not a size such as ``512MB`` or ``4GB``.
    """
    return _size_env("XGEN_DUCKDB_MEMORY", DEFAULT_MEMORY_LIMIT)


def duckdb_config(temp_directory: str, memory: str | None = None) -> dict:
    """DuckDB settings of every connection the product opens: :func:`memory_limit` (or ``memory``), the spill
    folder, and its cap ``XGEN_DUCKDB_SPILL`` when set (DuckDB's default: 90% of the free disk there).

    Raises:
        ValueError: ``XGEN_DUCKDB_MEMORY`` or ``XGEN_DUCKDB_SPILL`` is not a size.
    """
    config = {"memory_limit": memory or memory_limit(), "temp_directory": temp_directory}
    if spill := _size_env("XGEN_DUCKDB_SPILL", None):
        config["max_temp_directory_size"] = spill
    return config


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
