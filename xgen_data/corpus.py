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

import glob
import os
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
            os.makedirs(self.root, exist_ok=True)
            fsutil.write_json(self.meta_path, {"format": FORMAT, "format_version": FORMAT_VERSION,
                                               "inputs": {}, "shard_dirs": []})
        meta = self.read_meta()
        if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
            raise CorpusError(f"{self.meta_path}: format {meta.get('format')!r} v{meta.get('format_version')!r}, "
                              f"expected {FORMAT!r} v{FORMAT_VERSION}")

    # -- registry -------------------------------------------------------------------------------
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
        return sorted(s for s in os.listdir(os.path.join(self.root, "docs"))
                      if self.parts(s)) if os.path.isdir(os.path.join(self.root, "docs")) else []

    def parts(self, subset: str | None = None) -> list[Part]:
        """Finished parts (temporary files excluded), sorted by subset then name."""
        pattern = os.path.join(self.root, "docs", subset or "*", "*.parquet")
        out = []
        for path in sorted(glob.glob(pattern)):
            out.append(Part(os.path.basename(os.path.dirname(path)), os.path.basename(path), path))
        return out

    def step_path(self, step: str, part: Part) -> str:
        """Where step ``step`` writes its decisions for ``part``."""
        return os.path.join(self.root, "steps", step, part.subset, part.name)

    def step_glob(self, step: str) -> str:
        return os.path.join(self.root, "steps", step, "*", "*.parquet")

    def has_step(self, step: str) -> bool:
        return bool(glob.glob(self.step_glob(step)))

    def docs_glob(self) -> str:
        return os.path.join(self.root, "docs", "*", "*.parquet")
