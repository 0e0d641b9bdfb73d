"""Split one code corpus into a stage-1 ``code`` half and a stage-2 ``starcoder`` half in BigCode's layout.

XGen's stage 2 adds BigCode StarCoder data to stage-1 data (SPEC §2). ``xgen demo`` has no StarCoder data, so it
makes a stand-in from the code it has: every file goes to exactly one half, so the two subsets hold disjoint
files (a copy of the stage-1 code would only be exact duplicates, removed by dedup).

* **Split** (:func:`assign`): per language, files are ordered by ``sha256(f"{seed}:{id}")`` and alternate
  between the halves, the first to ``starcoder``. Deterministic for a seed, about half of every language on
  each side, and a language with a single file still reaches the language-weighted ``starcoder`` subset. A file
  with no identified language stays in ``code`` (StarCoder data is filed by language folder).
* **Layout** (:func:`write_split`): the ``code`` half is written back in the corpus schema
  (``code.jsonl.zst``); the ``starcoder`` half as StarCoderData's Parquet files,
  ``<language>/train-00000-of-00001.parquet`` with columns ``id``, ``content``, ``max_stars_repo_name``,
  ``max_stars_repo_path``, ``max_stars_count`` and ``max_stars_repo_licenses`` (a list: every license of the
  repository applies; :func:`repo_licenses`), which :func:`xgen_data.sources.readers.detect_layout` recognises.

Records that are not JSON objects are passed to the ``code`` half unchanged, so ingest reports them as
before (file and line).
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from xgen_data.attributes import languages
from xgen_data.errors import InputError
from xgen_data.sources import readers
from xgen_data.store import fsutil

STARCODER_FILE = "train-00000-of-00001.parquet"
NO_LANGUAGE = "(none)"


def split_rank(seed: int, doc_id: str) -> bytes:
    """The sort key of one file inside its language: ``sha256(f"{seed}:{id}")`` (stable across platforms)."""
    return hashlib.sha256(f"{seed}:{doc_id}".encode("utf-8")).digest()


def record_language(rec: dict) -> str | None:
    """A record's language as a key of :mod:`xgen_data.attributes.languages`: the record's own when the table lists it
    (``Python`` -> ``python``), else what :func:`xgen_data.attributes.languages.identify` says from path and first line;
    None when neither names a language of the table (``en``, unknown extensions)."""
    key = languages.source_key(rec.get("language") if isinstance(rec.get("language"), str) else None)
    if key in languages.table():
        return key
    text = rec.get("text") if isinstance(rec.get("text"), str) else None
    path = rec.get("path") if isinstance(rec.get("path"), str) else None
    return languages.identify(path, text[:256] if text else None)[0]


def assign(items: Iterable[tuple[str, str | None]], seed: int) -> set[str]:
    """The ids that go to the ``starcoder`` half (see module docstring).

    Args:
        items: ``(id, language key or None)`` per file; ids are unique.
    """
    by_lang: dict[str, list[tuple[bytes, str]]] = {}
    for doc_id, lang in items:
        if lang is not None:
            by_lang.setdefault(lang, []).append((split_rank(seed, doc_id), doc_id))
    out = set()
    for members in by_lang.values():
        out.update(doc_id for _, doc_id in sorted(members)[0::2])
    return out


def repo_licenses(label) -> list[str]:
    """A record's license label as StarCoderData's ``max_stars_repo_licenses`` list (all items apply).

    A top-level ``A AND B`` without parentheses becomes ``["A", "B"]`` (the same meaning); any other
    expression, ``OR`` and ``WITH`` included, stays one item as written (messy labels are kept, never
    repaired here: :mod:`xgen_data.attributes.licenses` judges them after ingest); a JSON list stays a list; empty or
    missing is ``[]``.
    """
    if isinstance(label, (list, tuple)):
        return [str(x) for x in label]
    if not isinstance(label, str) or not label.strip():
        return []
    s = label.strip()
    if s.startswith("[") and s.endswith("]"):
        try:
            items = json.loads(s)
        except ValueError:
            items = None
        if isinstance(items, list) and all(isinstance(x, str) for x in items):
            return items
    words = s.split()
    if "(" not in s and " AND " in f" {s} " and not {"OR", "WITH"} & set(words):
        return [x.strip() for x in s.split(" AND ") if x.strip()]
    return [s]


def starcoder_row(rec: dict) -> dict:
    """One corpus-schema code record as a StarCoderData row (see module docstring): the repository is
    ``meta.repo`` / ``meta.max_stars_repo_name``, else ``<registry>/<package>`` (``pypi/requests``), else the
    record's ``source``; stars only when the record has them (``meta.stars``), never invented."""
    meta = rec.get("meta") if isinstance(rec.get("meta"), dict) else {}
    repo = meta.get("max_stars_repo_name") or meta.get("repo")
    if not repo and meta.get("package"):
        repo = f"{meta['registry']}/{meta['package']}" if meta.get("registry") else str(meta["package"])
    stars = meta.get("max_stars_count", meta.get("stars"))
    return {"id": str(rec["id"]), "content": rec["text"], "max_stars_repo_name": str(repo or rec.get("source") or ""),
            "max_stars_repo_path": rec.get("path") or "", "max_stars_count": int(stars) if stars is not None else None,
            "max_stars_repo_licenses": repo_licenses(rec.get("license"))}


@dataclass
class SplitReport:
    """What :func:`write_split` wrote: ``code_path``, ``starcoder_paths`` (one per language), files per half
    and language (``code`` counts include files with no language, :data:`NO_LANGUAGE`)."""

    code_path: str
    starcoder_root: str
    starcoder_paths: list[str] = field(default_factory=list)
    code: Counter = field(default_factory=Counter)
    starcoder: Counter = field(default_factory=Counter)
    passed_through: int = 0  # records that are not JSON objects with id and text (left to ingest to report)

    def ingest_paths(self) -> list[str]:
        """The files to ingest: ``code_path`` unless it holds no record (every file went to ``starcoder``, as
        one file per language does; ingest refuses an input with no record), then ``starcoder_paths``."""
        has_code = sum(self.code.values()) + self.passed_through > 0
        return ([self.code_path] if has_code else []) + list(self.starcoder_paths)


def _parse(raw: bytes | dict) -> dict | None:
    if isinstance(raw, dict):
        rec = raw
    else:
        try:
            rec = json.loads(raw)
        except ValueError:
            return None
    if not isinstance(rec, dict) or not isinstance(rec.get("id"), str) or not isinstance(rec.get("text"), str):
        return None
    return rec


def write_split(records: Callable[[], Iterator[bytes | dict]], out_dir: str, seed: int,
                starcoder: bool = True) -> SplitReport:
    """Split the code records into ``out_dir/code.jsonl.zst`` and ``out_dir/starcoder/<lang>/`` (module docstring).

    Args:
        records: called twice (ids and languages first, then the writing pass); each call yields the same
            records in the same order: JSON lines (bytes) or dicts of the corpus schema.
        seed: the split's seed (the demo uses its recipe's).
        starcoder: False writes every record to ``code.jsonl.zst`` (a recipe with no ``starcoder`` subset).
    Returns:
        a :class:`SplitReport`. Same records and seed give byte-identical files (written atomically);
        language folders of an earlier split that this one does not write are removed.
    Raises:
        ValueError: two records share an id.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    seen: dict[str, str | None] = {}
    for raw in records():
        rec = _parse(raw)
        if rec is None:
            continue
        if rec["id"] in seen:
            raise InputError(f"code records: id {rec['id']!r} occurs twice")
        seen[rec["id"]] = record_language(rec)
    to_star = assign(seen.items(), seed) if starcoder else set()
    rep = SplitReport(os.path.join(out_dir, "code.jsonl.zst"), os.path.join(out_dir, "starcoder"))
    rows: dict[str, list[dict]] = {}
    os.makedirs(out_dir, exist_ok=True)
    with fsutil.atomic_path(rep.code_path) as tmp:
        with open(tmp, "wb") as f:
            w = zstandard.ZstdCompressor(level=3).stream_writer(f)
            for raw in records():
                rec = _parse(raw)
                if rec is not None and rec["id"] in to_star:
                    lang = seen[rec["id"]]
                    rows.setdefault(lang, []).append(starcoder_row(rec))
                    rep.starcoder[lang] += 1
                    continue
                if rec is None:
                    rep.passed_through += 1
                    line = raw if isinstance(raw, bytes) else json.dumps(raw, ensure_ascii=False).encode("utf-8")
                else:
                    rep.code[seen[rec["id"]] or NO_LANGUAGE] += 1
                    line = raw if isinstance(raw, bytes) else json.dumps(rec, ensure_ascii=False).encode("utf-8")
                w.write(line.rstrip(b"\r\n") + b"\n")
            w.flush(zstandard.FLUSH_FRAME)
    schema = pa.schema([("id", pa.string()), ("content", pa.string()), ("max_stars_repo_name", pa.string()),
                        ("max_stars_repo_path", pa.string()), ("max_stars_count", pa.int64()),
                        ("max_stars_repo_licenses", pa.list_(pa.string()))])
    if os.path.isdir(rep.starcoder_root):
        import shutil

        for old in sorted(os.listdir(rep.starcoder_root)):
            if old not in rows and os.path.isdir(os.path.join(rep.starcoder_root, old)):
                shutil.rmtree(os.path.join(rep.starcoder_root, old))
    for lang in sorted(rows):
        path = os.path.join(rep.starcoder_root, lang, STARCODER_FILE)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        table = pa.Table.from_pylist(rows[lang], schema=schema)
        with fsutil.atomic_path(path) as tmp:
            pq.write_table(table, tmp, compression="zstd")
        rep.starcoder_paths.append(path)
    return rep


def corpus_lines(path: str) -> Callable[[], Iterator[bytes]]:
    """A re-callable reader of one corpus-schema file's lines (``.jsonl``, ``.jsonl.gz``, ``.jsonl.zst``), for
    :func:`write_split`."""
    def gen() -> Iterator[bytes]:
        for rec in readers.iter_raw(path):
            yield rec.payload if isinstance(rec.payload, bytes) else json.dumps(rec.payload).encode("utf-8")
    return gen
