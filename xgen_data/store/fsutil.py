"""Crash-safe file writing: write to a temporary name in the same folder, then rename (POSIX atomic)."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from typing import Any

from xgen_data.errors import InputError


def tmp_name(path: str) -> str:
    """The temporary name used while ``path`` is being written (same folder, so rename is atomic)."""
    head, tail = os.path.split(path)
    return os.path.join(head, f".{tail}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path to write; on success rename it to ``path``, on error delete it.

    Readers never see a half-written ``path``: it either keeps its old content or has the new one.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = tmp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_json(path: str, obj: Any) -> None:
    """Atomically write ``obj`` as indented UTF-8 JSON to ``path``."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1, ensure_ascii=False, sort_keys=False)
            f.write("\n")
        crash_point("write_json.tmp_written")


def read_json(path: str) -> Any:
    """Read a JSON file; ``ValueError`` names the file when it is not valid JSON."""
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: not valid JSON: {exc}") from None


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


#: Environment variable naming the commit point at which :func:`crash_point` kills this process (tests).
CRASH_ENV = "XGEN_CRASH_AT"


def crash_point(name: str) -> None:
    """A named commit point of a step: when ``$XGEN_CRASH_AT`` equals ``name``, die now with SIGKILL.

    The crash-consistency tests (``tests/test_integrity.py``) run each step in a subprocess with this variable
    set to each of its commit points in turn, then check that the corpus is in its old or its new state. In
    normal runs the variable is unset and this costs one dictionary lookup.
    """
    if os.environ.get(CRASH_ENV) == name:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (another user's counts as alive), for cleaning up the
    leftovers (``.tmp-<pid>`` names, spill folders) of killed processes only."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def self_checksum(obj: dict, field: str) -> str:
    """Hex SHA-256 of ``obj``'s canonical JSON without its own checksum ``field``: ``json.dumps(sort_keys=True,
    separators=(",", ":"), ensure_ascii=False)`` as UTF-8, so neither key order nor indentation matters and
    Python floats survive the JSON round trip exactly (the shards manifest's ``manifest_sha256``, the corpus
    registry's ``registry_sha256``)."""
    body = {k: v for k, v in obj.items() if k != field}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"),
                                     ensure_ascii=False).encode("utf-8")).hexdigest()
