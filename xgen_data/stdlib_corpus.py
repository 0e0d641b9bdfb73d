"""The demo's embedded corpus: the running Python's own standard library, no download needed.

* code: every ``.py`` file of the standard library (tests, ``site-packages`` and ``idlelib`` excluded),
  license ``PSF-2.0``, language ``python``;
* natural language: the documentation that ships with Python: the help topics of ``pydoc_data``
  (the reference manual's sections that ``help()`` shows) and, per module, its docstrings (module, classes,
  functions, in source order) as one document.

Written as ``code.jsonl.zst`` and ``nl.jsonl.zst`` in the shared corpus schema, so the demo ingests them
through the same path as any user corpus.
"""
from __future__ import annotations

import ast
import json
import os
import sys
import sysconfig
from collections.abc import Iterator

import zstandard

from xgen_data import fsutil

_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "idlelib", "turtledemo"}
LICENSE = "PSF-2.0"


def stdlib_files() -> list[str]:
    """Sorted paths of the standard library's ``.py`` files (see module docstring for exclusions)."""
    root = sysconfig.get_paths()["stdlib"]
    out = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
        out += [os.path.join(folder, f) for f in sorted(files) if f.endswith(".py")]
    return out


def _docstrings(tree: ast.Module) -> list[str]:
    out = []
    for node in [tree, *ast.walk(tree)]:
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc and doc not in out:
                out.append(doc if isinstance(node, ast.Module) else f"{node.name}: {doc}")
    return out


def records() -> Iterator[tuple[str, dict]]:
    """Yield ``(subset file stem, record)`` pairs: ``code`` and ``nl`` records of the shared corpus schema."""
    root = sysconfig.get_paths()["stdlib"]
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for path in stdlib_files():
        rel = os.path.relpath(path, root)
        with open(path, "rb") as f:
            raw = f.read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            continue  # a few stdlib files are deliberately in other encodings
        yield "code", {"id": f"python{version}:{rel}", "text": text, "source": f"python{version}-stdlib",
                       "license": LICENSE, "language": "python", "path": rel, "meta": {"n_bytes": len(raw)}}
        try:
            docs = _docstrings(ast.parse(text))
        except (SyntaxError, ValueError):
            docs = []
        if docs:
            module = rel[:-3].replace(os.sep, ".")
            yield "nl", {"id": f"python{version}-doc:{module}", "text": "\n\n".join(docs),
                         "source": f"python{version}-docstrings", "license": LICENSE, "language": "en",
                         "path": rel, "meta": {"module": module}}
    try:
        from pydoc_data.topics import topics
    except ImportError:
        topics = {}
    for name in sorted(topics):
        yield "nl", {"id": f"python{version}-topic:{name}", "text": topics[name], "source": f"python{version}-pydoc-topics",
                     "license": LICENSE, "language": "en", "path": f"pydoc_data/topics.py#{name}", "meta": {}}


def write_corpus(out_dir: str) -> list[str]:
    """Write ``code.jsonl.zst`` and ``nl.jsonl.zst`` into ``out_dir`` (atomically); return their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {stem: os.path.join(out_dir, f"{stem}.jsonl.zst") for stem in ("code", "nl")}
    cctx = zstandard.ZstdCompressor(level=3)
    with fsutil.atomic_path(paths["code"]) as tmp_code, fsutil.atomic_path(paths["nl"]) as tmp_nl:
        with open(tmp_code, "wb") as fc, open(tmp_nl, "wb") as fn:
            writers = {"code": cctx.stream_writer(fc), "nl": zstandard.ZstdCompressor(level=3).stream_writer(fn)}
            for stem, rec in records():
                writers[stem].write((json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8"))
            for w in writers.values():
                w.flush(zstandard.FLUSH_FRAME)
    return [paths["code"], paths["nl"]]
