"""Evaluation output folders: written whole through the shared folder publisher
(:class:`xgen_data.store.publish.FolderPublisher`: locked, temporary sibling, crash-safe swap), with a manifest
of sha256 checksums that readers verify.

A folder written by :func:`write_folder` holds the named files and ``xgen_eval.json``
(``{"format": "xgen-eval", "kind": ..., "sha256": {file: hex}, "inputs": [{"path", "sha256"}]}``; ``inputs``,
the files the results were computed from, only where the command read any). Rewriting a folder replaces it
only when it is absent, empty or an earlier output of the same kind holding only the files its manifest lists;
anything else is refused, naming the foreign files. :func:`read_verified` reads a file back and checks it
against the manifest.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from xgen_data.errors import DamagedDataError, InputError
from xgen_data.store.publish import FolderPublisher, make_parent

__all__ = ["MANIFEST", "check_writable", "publisher", "require_extra", "read_manifest", "read_verified",
           "write_folder"]

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


def _listed_files(kind: str):
    """``listed_files`` of the :class:`~xgen_data.store.publish.FolderPublisher` of a ``kind`` output folder: the
    files its manifest lists and the manifest; None for a folder that is not an earlier ``kind`` output."""

    def listed(folder: str) -> set[str] | None:
        man = _manifest_or_none(folder)
        if man is None or man.get("kind") != kind:
            return None
        return {MANIFEST, *man["sha256"]}

    return listed


def _is_complete(folder: str) -> bool:
    """Whether ``folder`` (a swap's backup) holds its manifest and every file listed (the manifest is written
    last)."""
    man = _manifest_or_none(folder)
    return man is not None and all(os.path.isfile(os.path.join(folder, f)) for f in man["sha256"])


def publisher(out: str | os.PathLike, kind: str) -> FolderPublisher:
    """The :class:`~xgen_data.store.publish.FolderPublisher` of a ``kind`` output folder (commit points
    ``eval.before_swap``, ``eval.after_backup``, ``eval.after_swap``)."""
    return FolderPublisher(str(out), listed_files=_listed_files(kind), is_complete=_is_complete,
                           what=f"`{kind}` output", crash_prefix="eval")


def _refuse_foreign(out: str | os.PathLike, kind: str, pub: FolderPublisher | None = None) -> None:
    (pub or publisher(out, kind)).check_foreign(hint="move them away or choose another --out",
                                                not_ours=f"is not an earlier `{kind}` output of xgen")


def check_writable(out: str | os.PathLike, kind: str) -> None:
    """Refuse early, before the work, an ``out`` that :func:`write_folder` would refuse (it checks again, locked).

    Raises:
        RefusedError: ``out`` is a file, a non-empty folder other than an earlier ``kind`` output, or one
            holding files its manifest does not list (names them).
    """
    _refuse_foreign(out, kind)


def write_folder(out: str | os.PathLike, kind: str, files: dict[str, bytes | str],
                 inputs: list[dict] | None = None) -> Path:
    """Write ``files`` (name -> content) and the manifest into ``out``, replacing an earlier ``kind`` output.

    Written through the shared folder publisher (:func:`publisher`): one writer at a time (a lock naming its
    holder), into a temporary sibling ``.<out>.tmp-<pid>`` that is swapped in, so a kill at any point leaves the
    earlier folder or the new one (or the earlier one in ``.<out>.backup``, put back by the next write);
    leftovers of killed runs are removed. The manifest is written last.

    Args:
        inputs: ``{"path", "sha256"}`` of each file the results were computed from
            (:mod:`xgen_train.evaluate.inputs`), recorded in the manifest's ``inputs``.
    Raises:
        RefusedError: ``out`` is a file, a non-empty folder that is not an earlier ``kind`` output, or one
            holding files its manifest does not list (names them); another process is writing it.
        InputError: a path above ``out`` is a file.
    """
    make_parent(str(out))
    with publisher(out, kind) as pub:
        _refuse_foreign(out, kind, pub)
        tmp = Path(pub.begin())
        sums = {}
        for name, content in files.items():
            data = content.encode("utf-8") if isinstance(content, str) else content
            _write_synced(tmp / name, data)
            sums[name] = hashlib.sha256(data).hexdigest()
        man = {"format": "xgen-eval", "kind": kind, "sha256": sums}
        if inputs is not None:
            man["inputs"] = [{"path": str(i["path"]), "sha256": i["sha256"]} for i in inputs]
        _write_synced(tmp / MANIFEST, (json.dumps(man, indent=1) + "\n").encode("utf-8"))
        pub.commit()
    return Path(out)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _manifest_or_none(folder: str | os.PathLike) -> dict | None:
    try:
        man = json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return man if isinstance(man, dict) and isinstance(man.get("sha256"), dict) else None
