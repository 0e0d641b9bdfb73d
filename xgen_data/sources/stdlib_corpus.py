"""The demo's embedded corpus: the running Python's own standard library, no download needed.

* code: every ``.py`` file of the standard library (tests, ``site-packages`` and ``idlelib`` excluded),
  license ``PSF-2.0``, language ``python``, and the library's other UTF-8 text files whose name or first line
  names a language of :mod:`xgen_data.attributes.languages` (its ``Makefile``, shell and PowerShell scripts, ``config.c``,
  a stylesheet, reStructuredText), each with that language;
* natural language: the documentation that ships with Python: the help topics of ``pydoc_data``
  (the reference manual's sections that ``help()`` shows) and, per module, its docstrings (module, classes,
  functions, in source order) as one document.

Written as ``nl.jsonl.zst`` in the shared corpus schema and the code split in two disjoint halves
(:mod:`xgen_data.sources.code_split`): ``code.jsonl.zst`` for stage 1 and a StarCoderData-layout ``starcoder/``
folder for stage 2, so the demo ingests them through the same path as any user corpus.
"""
from __future__ import annotations

import ast
import json
import os
import sys
import sysconfig
from collections.abc import Iterator

import zstandard

from xgen_data.store import fsutil

_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "idlelib", "turtledemo"}
LICENSE = "PSF-2.0"


def stdlib_files(python_only: bool = True) -> list[str]:
    """Sorted paths of the standard library's ``.py`` files (see module docstring for exclusions); with
    ``python_only=False`` every file of those folders (the caller keeps the text files of a known language)."""
    root = sysconfig.get_paths()["stdlib"]
    out = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
        out += [os.path.join(folder, f) for f in sorted(files) if f.endswith(".py") or not python_only]
    return out


def _other_code(root: str, version: str) -> Iterator[dict]:
    """Code records of the library's non-``.py`` text files of a known language (module docstring)."""
    from xgen_data.attributes import languages

    for path in stdlib_files(python_only=False):
        if path.endswith((".py", ".pyc")) or os.path.getsize(path) > (1 << 20):
            continue
        with open(path, "rb") as f:
            raw = f.read()
        if b"\0" in raw:
            continue  # binary (.so, .a, .o, .pickle, .whl)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            continue
        rel = os.path.relpath(path, root)
        lang, _ = languages.identify(rel, text[:256])
        if lang is None or lang == "python":
            continue
        yield {"id": f"python{version}:{rel}", "text": text, "source": f"python{version}-stdlib", "license": LICENSE,
               "language": lang, "path": rel, "meta": {"n_bytes": len(raw)}}


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
    for rec in _other_code(root, version):
        yield "code", rec
    try:
        from pydoc_data.topics import topics
    except ImportError:
        topics = {}
    for name in sorted(topics):
        yield "nl", {"id": f"python{version}-topic:{name}", "text": topics[name], "source": f"python{version}-pydoc-topics",
                     "license": LICENSE, "language": "en", "path": f"pydoc_data/topics.py#{name}", "meta": {}}


def write_corpus(out_dir: str, seed: int = 0, starcoder: bool = True):
    """Write ``nl.jsonl.zst`` and the code split (``code.jsonl.zst`` + ``starcoder/<language>/*.parquet``,
    :func:`xgen_data.sources.code_split.write_split` with ``seed``; ``starcoder=False``: all code in
    ``code.jsonl.zst``) into ``out_dir`` (atomically).

    Returns:
        ``(paths to ingest, the split's SplitReport)``.
    """
    from xgen_data.sources import code_split

    os.makedirs(out_dir, exist_ok=True)
    nl_path = os.path.join(out_dir, "nl.jsonl.zst")
    code = []  # the library's code text, a few tens of MB, held for the split's two passes
    with fsutil.atomic_path(nl_path) as tmp_nl:
        with open(tmp_nl, "wb") as fn:
            w = zstandard.ZstdCompressor(level=3).stream_writer(fn)
            for stem, rec in records():
                if stem == "nl":
                    w.write((json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8"))
                else:
                    code.append(rec)
            w.flush(zstandard.FLUSH_FRAME)
    split = code_split.write_split(lambda: iter(code), out_dir, seed, starcoder)
    return [split.code_path, nl_path, *split.starcoder_paths], split


INSTRUCT_FILE = "instruct.jsonl"


def write_instructions(out_dir: str, limit: int = 2000, max_chars: int = 600) -> str:
    """Write ``instruct.jsonl`` of ``{id, prompt, response}`` pairs made from the standard library's own
    documentation, for the demo's instruction-tuning step when the corpus has no instruct subset: "What is the
    Python module M for?" answered by the first paragraph of M's docstring, and "Explain the Python topic T."
    by the first paragraph of pydoc's topic text; the first ``limit`` with a paragraph of 20 to ``max_chars``
    characters, in :func:`records` order (deterministic). Returns the file's path (written atomically)."""
    path = os.path.join(out_dir, INSTRUCT_FILE)
    os.makedirs(out_dir, exist_ok=True)
    n = 0
    with fsutil.atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for stem, rec in records():
            if stem != "nl" or n >= limit:
                continue
            para = " ".join(rec["text"].strip().split("\n\n")[0].split())
            if not 20 <= len(para) <= max_chars:
                continue
            module = rec["meta"].get("module")
            prompt = (f"What is the Python module {module} for?" if module else
                      f"Explain the Python topic {rec['id'].rsplit(':', 1)[-1]}.")
            f.write(json.dumps({"id": rec["id"], "prompt": prompt, "response": para}, ensure_ascii=False) + "\n")
            n += 1
    return path
