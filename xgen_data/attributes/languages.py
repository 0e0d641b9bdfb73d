"""Programming-language identification for code documents (SPEC §2 stage 2: StarCoder's languages + Apex).

The table is data, ``xgen_data/attributes/languages.toml``: StarCoderData's 88 language folders plus Apex, each with GitHub
linguist's extensions (the first is linguist's primary one), file names and shebang interpreters (its source
and commit are in the file; ``scripts/make_languages_toml.py`` regenerates it). Keys are StarCoderData's
folder names (``python``, ``c-sharp``, ``apex``). Each entry's ``kind`` (:func:`kind`): ``starcoder`` for the
86 programming languages StarCoder counts (SPEC §2 "all 86 programming languages"), ``data`` for the data
formats JSON and YAML that StarCoderData also holds, ``extra`` for Apex (XGen's stage-1 addition).

Rules (:func:`identify`), first match wins:

1. ``filename``: the file's base name is listed (``Makefile``, ``Dockerfile``, ``CMakeLists.txt``);
2. ``extension``: its extension (case-insensitive, the longest listed suffix: ``.blade.php`` before ``.php``)
   names one language, or several of which exactly one has it as its primary extension (``.cls`` → Apex,
   not TeX or Visual Basic), or the table's ``extension_overrides`` decide it (``.h`` → C);
3. ``shebang``: a ``#!`` first line names a listed interpreter (``/usr/bin/env python3`` → ``python``);
4. otherwise ``ambiguous`` (the extension names several languages and none is primary: ``.m``) or
   ``unknown``: no language is guessed; both are counted.

A language the source gives (``documents.language``) is kept (:func:`source_key` maps it to a key, e.g.
``C++`` → ``cpp``); the attribute step records what the table says next to it, so disagreements can be counted.
"""
from __future__ import annotations

import functools
import importlib.resources
import os
import re
import tomllib

from xgen_data.store import fsutil

TABLE_FILE = str(importlib.resources.files("xgen_data.attributes") / "languages.toml")  # package data
SHEBANG_RE = re.compile(r"^#!\s*(\S+)(?:\s+(?:-\S+\s+)*(\S+))?")


@functools.lru_cache(maxsize=1)
def table() -> dict:
    """``{key: {"name", "kind", "extensions", "filenames", "interpreters"}}`` from ``languages.toml``."""
    with open(TABLE_FILE, "rb") as f:
        raw = tomllib.load(f)
    return {k: v for k, v in raw.items() if isinstance(v, dict) and k != "extension_overrides"}


#: The kinds of :func:`kind`, with the number of table entries of each (checked by the tests).
KINDS = {"starcoder": 86, "data": 2, "extra": 1}


def kind(key: str | None) -> str | None:
    """``starcoder`` (one of StarCoder's 86 programming languages), ``data`` (``json``, ``yaml``), ``extra``
    (``apex``), or None for a key the table does not list (``en``, None)."""
    entry = table().get(key) if key is not None else None
    return entry["kind"] if entry is not None else None


def keys_of_kind(name: str) -> list[str]:
    """Sorted table keys of one kind (``keys_of_kind("starcoder")``: StarCoder's 86)."""
    return sorted(k for k, v in table().items() if v["kind"] == name)


@functools.lru_cache(maxsize=1)
def overrides() -> dict[str, str]:
    """``{extension: key}`` for extensions several languages list, decided on purpose (``.h`` → ``c``)."""
    with open(TABLE_FILE, "rb") as f:
        return dict(tomllib.load(f).get("extension_overrides", {}))


@functools.lru_cache(maxsize=1)
def _maps():
    by_ext: dict[str, list[str]] = {}
    primary: dict[str, str] = {}
    by_name: dict[str, list[str]] = {}
    by_interp: dict[str, str] = {}
    for key, lang in table().items():
        for i, ext in enumerate(lang["extensions"]):
            by_ext.setdefault(ext.lower(), []).append(key)
            if i == 0:
                primary.setdefault(ext.lower(), key)
        for n in lang["filenames"]:
            by_name.setdefault(n, []).append(key)
        for it in lang["interpreters"]:
            by_interp.setdefault(it, key)
    return by_ext, primary, by_name, by_interp


def _by_extension(base: str) -> tuple[str | None, str | None]:
    by_ext, primary, _, _ = _maps()
    low = base.lower()
    dots = [i for i, c in enumerate(low) if c == "." and i > 0] + ([0] if low.startswith(".") else [])
    for i in sorted(dots):  # the longest suffix first
        ext = low[i:]
        keys = by_ext.get(ext)
        if not keys:
            continue
        if len(keys) == 1:
            return keys[0], "extension"
        if ext in overrides():
            return overrides()[ext], "extension"
        prim = [k for k in keys if primary.get(ext) == k]
        if len(prim) == 1:
            return prim[0], "extension"
        return None, "ambiguous"
    return None, None


def _by_shebang(text: str | None) -> str | None:
    if not text or not text.startswith("#!"):
        return None
    m = SHEBANG_RE.match(text[:256].split("\n", 1)[0])
    if not m:
        return None
    prog = os.path.basename(m.group(1))
    if prog == "env" and m.group(2):
        prog = os.path.basename(m.group(2))
    by_interp = _maps()[3]
    for cand in (prog, prog.rstrip("0123456789."), re.sub(r"[0-9.]+$", "", prog)):
        if cand in by_interp:
            return by_interp[cand]
    return None


def identify(path: str | None, text: str | None) -> tuple[str | None, str]:
    """``(language key or None, how)`` of one file, by the rules of the module docstring.

    Args:
        path: the file's path in its repository or package (only the base name is read).
        text: the file's content (only a ``#!`` first line is read).
    Returns:
        ``how`` is ``filename``, ``extension``, ``shebang``, ``ambiguous`` or ``unknown``.
    """
    base = os.path.basename(path or "")
    if base:
        keys = _maps()[2].get(base)
        if keys and len(keys) == 1:
            return keys[0], "filename"
        key, how = _by_extension(base)
        if key is not None:
            return key, how
    else:
        how = None
    key = _by_shebang(text)
    if key is not None:
        return key, "shebang"
    return None, how or "unknown"


@functools.lru_cache(maxsize=4096)
def source_key(language: str | None) -> str | None:
    """The table key of a language named by a source (``python``, ``Python``, ``C++``, ``c-sharp``), or the
    name itself lower-cased when the table does not list it (kept, never dropped); None for no language."""
    if language is None or not language.strip():
        return None
    s = language.strip()
    t = table()
    if s.lower() in t:
        return s.lower()
    for key, lang in t.items():
        if lang["name"].lower() == s.lower():
            return key
    return s.lower()


LANGUAGE_STEP = "language"


def language_params() -> dict:
    """Attribute parameters of the ``language`` step: the table file's SHA-256 (a new table, a new set)."""
    return {"table_sha256": fsutil.sha256_file(TABLE_FILE), "schema": 2}
