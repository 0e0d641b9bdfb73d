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
    from xgen_data.store import fsutil

    return {"table_sha256": fsutil.sha256_file(TABLE_FILE), "schema": 2}


def compute_language_attributes(corpus, verify: bool = True) -> bool:
    """Write and commit the ``language`` attributes of every part (one new generation), unless current.

    Per document (``attributes/language/<hash>/<gen>/<subset>/<part>.parquet``): ``id``,
    ``language_source`` (the source's language as a table key, :func:`source_key`; null: none given),
    ``language_detected`` and ``language_how`` (:func:`identify` on ``path`` and the text's first line), and
    ``language`` = the source's when given (kept), else the detected one (null: unknown, never guessed),
    ``language_is_code`` (``language`` is a programming language of the table) and ``language_disagrees``
    (the source names a language of the table and the table says another one; a natural language such as
    ``en`` never disagrees).
    Call under the corpus lock. Returns False when the set was already current.

    Raises:
        DamagedPartError: a part is damaged (``verify``).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from xgen_data.store import fsutil

    key = language_params()
    if corpus.attribute_current(LANGUAGE_STEP, key):
        return False
    parts, fingerprint, gen = corpus.start_attributes(LANGUAGE_STEP, key, verify)
    for i, part in enumerate(parts):
        t = pq.read_table(part.path, columns=["id", "path", "language", "text"])
        src, det, how = [], [], []
        for path, lang, text in zip(t.column("path").to_pylist(), t.column("language").to_pylist(),
                                    t.column("text").to_pylist()):
            k, h = identify(path, text[:256] if text else text)
            src.append(source_key(lang))
            det.append(k)
            how.append(h)
        keys = table()
        final = [s if s is not None else d for s, d in zip(src, det)]
        out = pa.table({"id": t.column("id"), "language_source": pa.array(src, pa.string()),
                        "language_detected": pa.array(det, pa.string()), "language_how": pa.array(how, pa.string()),
                        "language": pa.array(final, pa.string()),
                        "language_is_code": pa.array([f in keys for f in final], pa.bool_()),
                        "language_disagrees": pa.array([s in keys and d is not None and s != d
                                                        for s, d in zip(src, det)], pa.bool_())})
        with fsutil.atomic_path(corpus.attribute_path(gen, part)) as tmp:
            pq.write_table(out, tmp, compression="zstd")
        if i == 0:
            fsutil.crash_point("language.part_written")
    corpus.commit_attributes(LANGUAGE_STEP, key, gen, fingerprint)  # language.before_commit / .committed
    return True
