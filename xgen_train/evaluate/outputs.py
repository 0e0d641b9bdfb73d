"""Evaluation output folders: written whole under a temporary sibling and renamed into place, with a
manifest of sha256 checksums that readers verify.

A folder written by :func:`write_folder` holds the named files and ``xgen_eval.json``
(``{"format": "xgen-eval", "kind": ..., "sha256": {file: hex}}``). Rewriting a folder replaces it only when it is
absent, empty or an earlier output of the same kind; anything else is refused. :func:`read_verified` reads a
file back and checks it against the manifest.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from xgen_data.errors import DamagedDataError, InputError, RefusedError

__all__ = ["MANIFEST", "check_writable", "require_extra", "read_manifest", "read_verified", "write_folder"]

MANIFEST = "xgen_eval.json"


def require_extra(module: str):
    """Import an ``[eval]`` extra's module, or raise InputError saying how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise InputError(f"this command needs the [eval] extra ({module} is not installed): pip install --no-deps "
                         "-r requirements-eval.lock (after requirements-hf.lock; see docs/evaluation.md)") from None


def read_manifest(folder: str | os.PathLike) -> dict:
    """The manifest of an output folder.

    Raises:
        InputError: no manifest (not an xgen eval output folder) or not valid JSON.
    """
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise InputError(f"{folder}: not an xgen eval output folder (no {MANIFEST})")
    try:
        man = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(man.get("sha256"), dict):
            raise ValueError("no sha256 table")
    except ValueError as exc:
        raise InputError(f"{path}: not a valid manifest ({exc})") from None
    return man


def read_verified(folder: str | os.PathLike, name: str) -> bytes:
    """The bytes of ``folder/name``, checked against the folder's manifest.

    Raises:
        InputError: no manifest, or the file is not listed in it.
        DamagedDataError: the file is missing or its sha256 differs from the manifest's.
    """
    man = read_manifest(folder)
    if name not in man["sha256"]:
        raise InputError(f"{folder}: {name} is not listed in {MANIFEST}")
    path = Path(folder) / name
    if not path.is_file():
        raise DamagedDataError(f"{path}: missing (listed in {MANIFEST})")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != man["sha256"][name]:
        raise DamagedDataError(f"{path}: sha256 differs from {MANIFEST} (the file changed after it was written)")
    return data


def check_writable(out: str | os.PathLike, kind: str) -> None:
    """Refuse (RefusedError) an ``out`` that is a file or a non-empty folder other than an earlier ``kind`` output."""
    out = Path(out)
    if out.exists():
        earlier = (out / MANIFEST).is_file() and _kind(out) == kind
        if not out.is_dir() or (any(out.iterdir()) and not earlier):
            raise RefusedError(f"{out}: exists and is not an earlier `{kind}` output of xgen; choose another --out")


def write_folder(out: str | os.PathLike, kind: str, files: dict[str, bytes | str]) -> Path:
    """Write ``files`` (name -> content) and the manifest into ``out`` atomically (temporary sibling, rename).

    Raises:
        RefusedError: ``out`` is a file, or a non-empty folder that is not an earlier ``kind`` output.
    """
    out = Path(out)
    check_writable(out, kind)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        sums = {}
        for name, content in files.items():
            data = content.encode("utf-8") if isinstance(content, str) else content
            with open(tmp / name, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            sums[name] = hashlib.sha256(data).hexdigest()
        (tmp / MANIFEST).write_text(json.dumps({"format": "xgen-eval", "kind": kind, "sha256": sums}, indent=1)
                                    + "\n", encoding="utf-8")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.rename(out, old / "out")
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _kind(folder: Path) -> str | None:
    try:
        return json.loads((folder / MANIFEST).read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError, AttributeError):
        return None
