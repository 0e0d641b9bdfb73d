"""The corpus directory: Parquet document parts per subset, step decisions, and a JSON registry.

Layout (``format_version`` 1)::

    corpus.json                      registry: subsets, ingested input files (by SHA-256), shard dirs
    docs/<subset>/<part>.parquet     documents, zstd-compressed; columns of DOC_SCHEMA
    steps/<step>/<subset>/<part>.parquet   one decision table per step and part (id, drop_reason, ...)

Every step runs per part, so parts can be processed by independent workers (or Ray tasks) and a step's
output for a part is replaced atomically. Steps apply in :data:`STEP_ORDER`; the first step that drops a
document gives its ``drop_reason``.
"""
from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa

from xgen_data import fsutil

FORMAT = "xgen-corpus"
FORMAT_VERSION = 1
#: Steps whose decisions make up ``documents.drop_reason``, in order of precedence.
STEP_ORDER = ("filter", "dedup")

DOC_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.string()),
        ("source", pa.string()),
        ("license", pa.string()),
        ("language", pa.string()),
        ("path", pa.string()),
        ("meta", pa.string()),
        ("n_chars", pa.int64()),
        ("n_bytes", pa.int64()),
        ("n_tokens", pa.int32()),
        ("tokens", pa.list_(pa.uint16())),
    ]
)


class CorpusError(ValueError):
    """The corpus directory is missing, of another format, or inconsistent."""


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}$")
_NAME_NO_DOT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_+-]{0,99}$")
_HELD: dict[str, int] = {}  # corpus root -> lock depth held by this process


def check_name(name: str, what: str, dots: bool = True) -> str:
    """Return ``name`` if it is safe as one path component (subset, stage, sub-stage names).

    Args:
        dots: allow ``.`` inside the name (subsets); stage and sub-stage names take none, so they can
            never collide with files such as ``manifest.json``.
    Raises:
        ValueError: names with ``/``, ``..``, spaces, a leading dot or dash, or longer than 100 characters.
    """
    pattern = _NAME if dots else _NAME_NO_DOT
    if not isinstance(name, str) or not pattern.match(name) or ".." in name:
        allowed = "letters, digits and _ . + -" if dots else "letters, digits and _ + -"
        raise ValueError(f"{what} {name!r} is not a valid name: use {allowed} "
                         "(starting with a letter or digit, no '..', at most 100 characters)")
    return name


def _check_registry(meta: dict, where: str) -> None:
    """Raise CorpusError when ``corpus.json``'s registry fields have the wrong types (hand edits, corruption)."""
    inputs, steps, dirs = meta.get("inputs", {}), meta.get("steps", {}), meta.get("shard_dirs", [])
    ok = (isinstance(inputs, dict) and isinstance(steps, dict) and isinstance(dirs, list)
          and all(isinstance(v, dict) and isinstance(v.get("subset"), str) and isinstance(v.get("parts"), list)
                  and isinstance(v.get("path"), str) for v in inputs.values())
          and all(isinstance(v, dict) for v in steps.values()))
    if not ok:
        raise CorpusError(f"{where}: registry is malformed ('inputs' must map to objects with path, subset and "
                          "parts; 'steps' to objects; 'shard_dirs' must be a list)")


@dataclass(frozen=True)
class Part:
    """One Parquet part of one subset."""

    subset: str
    name: str  # file name without folder, e.g. ``nl-1a2b3c4d-00000.parquet``
    path: str


class Corpus:
    """A corpus directory (see module docstring). ``Corpus(root, create=True)`` makes an empty one."""

    def __init__(self, root: str, create: bool = False):
        self.root = os.path.abspath(root)
        self.meta_path = os.path.join(self.root, "corpus.json")
        if not os.path.exists(self.meta_path):
            if not create:
                raise CorpusError(f"{root}: not an xgen corpus (no corpus.json); run `xgen ingest` first")
            if os.path.isdir(self.root) and os.listdir(self.root):
                raise CorpusError(f"{root}: folder exists, is not empty and is not an xgen corpus (no corpus.json); "
                                  "choose a new or empty folder for --corpus")
            os.makedirs(self.root, exist_ok=True)
            fsutil.write_json(self.meta_path, {"format": FORMAT, "format_version": FORMAT_VERSION,
                                               "inputs": {}, "shard_dirs": []})
        meta = self.read_meta()
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
            meta = meta if isinstance(meta, dict) else {}
            raise CorpusError(f"{self.meta_path}: format {meta.get('format')!r} v{meta.get('format_version')!r}, "
                              f"expected {FORMAT!r} v{FORMAT_VERSION}")
        _check_registry(meta, self.meta_path)

    # -- registry -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the corpus's exclusive lock (``flock`` on ``.lock``); other processes wait. Re-entrant.

        Every command that changes or packs the corpus (ingest, filter, dedup, the recipe flow with its
        build) holds it, so concurrent runs can neither lose each other's ``corpus.json`` updates nor pack
        documents while another command rewrites their decisions.
        """
        if _HELD.get(self.root, 0):
            _HELD[self.root] += 1
            try:
                yield
            finally:
                _HELD[self.root] -= 1
            return
        with open(os.path.join(self.root, ".lock"), "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            _HELD[self.root] = 1
            try:
                yield
            finally:
                _HELD[self.root] = 0
                fcntl.flock(f, fcntl.LOCK_UN)

    def read_meta(self) -> dict:
        """The parsed ``corpus.json``."""
        return fsutil.read_json(self.meta_path)

    def write_meta(self, meta: dict) -> None:
        """Atomically replace ``corpus.json``."""
        fsutil.write_json(self.meta_path, meta)

    def register_shard_dir(self, shard_dir: str) -> None:
        """Remember a shards directory built from this corpus (it feeds the SQL view ``shards``)."""
        meta = self.read_meta()
        path = os.path.abspath(shard_dir)
        if path not in meta.setdefault("shard_dirs", []):
            meta["shard_dirs"].append(path)
            self.write_meta(meta)

    # -- parts ----------------------------------------------------------------------------------
    def docs_dir(self, subset: str) -> str:
        return os.path.join(self.root, "docs", subset)

    def subsets(self) -> list[str]:
        """Names of subsets that have at least one part, sorted."""
        return sorted({p.subset for p in self.parts()})

    def parts(self, subset: str | None = None) -> list[Part]:
        """Parts registered in ``corpus.json``, sorted by subset then name.

        The registry is the source of truth: a part file written by a crashed ingest before its
        registration is invisible (and removed by the next ingest).
        """
        names = sorted({(v["subset"], name) for v in self.read_meta().get("inputs", {}).values()
                        for name in v["parts"]})
        return [Part(s, n, os.path.join(self.root, "docs", s, n)) for s, n in names if subset in (None, s)]

    def remove_unregistered(self) -> list[str]:
        """Delete part and step files that no registered part owns, and temporary files (call under :meth:`lock`)."""
        owned = {(p.subset, p.name) for p in self.parts()}
        removed = []
        folders = glob.glob(os.path.join(self.root, "docs", "*")) + glob.glob(os.path.join(self.root, "steps", "*", "*"))
        for folder in folders:
            for name in os.listdir(folder) if os.path.isdir(folder) else []:
                path = os.path.join(folder, name)
                ours = name.endswith(".parquet") or (name.startswith(".") and ".parquet.tmp-" in name)
                if ours and (os.path.basename(folder), name) not in owned and os.path.isfile(path):
                    os.remove(path)  # glob skips dot files; listdir sees the temporary ones too
                    removed.append(path)
        return removed

    def parts_fingerprint(self) -> str:
        """SHA-256 over the registered part names (any ingest that changes documents changes it)."""
        return hashlib.sha256("\n".join(f"{p.subset}/{p.name}" for p in self.parts()).encode()).hexdigest()

    # -- step state ------------------------------------------------------------------------------
    def step_state(self, step: str) -> dict | None:
        """What ``step`` last ran with: ``{"params", "parts", "after"}`` (None if it never ran)."""
        return self.read_meta().get("steps", {}).get(step)

    def record_step(self, step: str, params: dict) -> None:
        """Record that ``step`` ran with ``params`` on the current parts, after the earlier steps' states."""
        import json

        earlier = STEP_ORDER[:STEP_ORDER.index(step)] if step in STEP_ORDER else ()
        state = {"params": json.loads(json.dumps(params)), "parts": self.parts_fingerprint(),
                 "after": {s: self.step_state(s) for s in earlier}}
        meta = self.read_meta()
        meta.setdefault("steps", {})[step] = state
        self.write_meta(meta)

    def clear_step(self, step: str) -> None:
        """Delete a step's decisions and state."""
        import shutil

        shutil.rmtree(os.path.join(self.root, "steps", step), ignore_errors=True)
        meta = self.read_meta()
        if meta.get("steps", {}).pop(step, None) is not None:
            self.write_meta(meta)

    def step_path(self, step: str, part: Part) -> str:
        """Where step ``step`` writes its decisions for ``part``."""
        return os.path.join(self.root, "steps", step, part.subset, part.name)

    def step_glob(self, step: str) -> str:
        return os.path.join(self.root, "steps", step, "*", "*.parquet")

    def has_step(self, step: str) -> bool:
        return bool(glob.glob(self.step_glob(step)))

