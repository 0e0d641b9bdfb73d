"""``xgen verify``: check every file the corpus registry names against its recorded SHA-256.

Checked (:func:`verify_corpus`):

* ``registry``: ``corpus.json`` against its own ``registry_sha256`` (checked by every read; an edited or
  damaged registry is refused, naming the file); one written before the field existed is ``unrecorded``
  (``record=True`` stamps it).
* ``part``: each registered docs part against ``inputs[key]["part_sha256"]`` (recorded at ingest). A part
  ingested before SHA-256s were recorded is ``unrecorded``; ``record=True`` hashes and records it (under the
  corpus lock) once every row group of it decodes (a part without a sha256 that does not decode is ``damaged``).
* ``attributes``: each file of each committed attribute set against the SHA-256 recorded at its commit
  (:meth:`xgen_data.store.corpus.Corpus.commit_attributes`), and the ids of each file of a current set against
  its part's, in order (the ``documents`` view pairs them by position; readers check only the row
  counts); a set computed from other part contents is reported ``stale`` (not damage: the recipe flow
  recomputes it).
* ``shards``: each registered shards folder's ``manifest.json`` against its own ``manifest_sha256`` (an edited
  manifest is ``damaged``, naming the file; one written before the field existed is ``unrecorded``), and every
  shard's size and SHA-256 in it, and its ``.idx.parquet`` index's SHA-256 (``index_sha256``;
  :func:`xgen_data.shards.shard_format.verify`).

Statuses: ``ok``, ``unrecorded``, ``recorded``, ``stale`` (fine), ``unchecked`` (an attribute file whose own
SHA-256 matches but whose part is damaged or missing, so its ids are not compared: the part is the damage) and
``damaged``, ``missing`` (damage).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from xgen_data.shards import shard_format as shards
from xgen_data.store import fsutil
from xgen_data.store.corpus import (ATTRIBUTES, REGISTRY_SHA256, Corpus, attribute_rows_problem, params_hash,
                                    part_decode_problem)

DAMAGE = ("damaged", "missing")


@dataclass(frozen=True)
class Check:
    """The result for one file: ``kind`` (part, attributes, shards), ``path``, ``status``, ``detail``."""

    kind: str
    path: str
    status: str
    detail: str = ""


def verify_corpus(corpus_dir: str, record: bool = False, progress: bool = False) -> list[Check]:
    """Check the corpus's parts, attribute files and registered shard folders (module docstring).

    Raises:
        CorpusError: not a corpus, or ``corpus.json`` does not parse / is malformed.
    """
    corpus = Corpus(corpus_dir)
    with corpus.lock():
        meta = corpus.read_meta()  # refuses a registry that does not match its registry_sha256
        out = [_check_registry(corpus, meta, record)]
        parts, broken, new = _check_parts(corpus, meta, record, progress)
        out += parts
        if new or (record and REGISTRY_SHA256 not in meta):
            _record_parts(corpus, meta, new)
        fingerprint = corpus.parts_fingerprint()
        for key, state in sorted(meta.get("attributes", {}).items()):
            out += _check_attribute_set(corpus, key, state, fingerprint, broken)
        for shard_dir in meta.get("shard_dirs", []):
            out += _check_shard_dir(shard_dir)
    return out


def _check_registry(corpus: Corpus, meta: dict, record: bool) -> Check:
    if REGISTRY_SHA256 in meta:
        return Check("registry", corpus.meta_path, "ok", f"matches its {REGISTRY_SHA256}")
    return Check("registry", corpus.meta_path, "recorded" if record else "unrecorded",
                 f"no {REGISTRY_SHA256} (written by an older xgen)"
                 + ("; stamped" if record else "; the next write, or --record, stamps it"))


def _check_parts(corpus: Corpus, meta: dict, record: bool, progress: bool
                 ) -> tuple[list[Check], set[str], dict[tuple[str, str], str]]:
    """``(checks, broken, new)``: a check per registered part, the absolute paths of the damaged or missing
    ones (their attribute rows cannot be checked), and the SHA-256 to record for unrecorded parts that decode
    (``record=True``)."""
    from tqdm.auto import tqdm

    recorded = corpus.recorded_sha256(meta)
    out: list[Check] = []
    new: dict[tuple[str, str], str] = {}
    broken: set[str] = set()
    for p in tqdm(corpus.parts(), desc="verify parts", unit="part", disable=None if progress else True, leave=False):
        check, got = _check_part(p.path, recorded.get((p.subset, p.name)), record)
        out.append(check)
        if check.status in DAMAGE:
            broken.add(os.path.abspath(p.path))
        elif check.status == "recorded":
            new[(p.subset, p.name)] = got
    return out, broken, new


def _check_part(path: str, want: str | None, record: bool) -> tuple[Check, str | None]:
    """One part against its recorded SHA-256 ``want`` (None: unrecorded); returns the check and its SHA-256."""
    if not os.path.exists(path):
        return Check("part", path, "missing", "re-ingest its input"), None
    got = fsutil.sha256_file(path)
    if want is None:
        if why := part_decode_problem(path):
            return Check("part", path, "damaged", f"no recorded sha256, and it does not decode ({why}): not "
                         "recorded; re-ingest its input with `xgen ingest`"), got
        return Check("part", path, "recorded" if record else "unrecorded",
                     f"sha256 {got[:12]}…" + ("" if record else "; record with --record")), got
    if got != want:
        return Check("part", path, "damaged", f"sha256 {got[:12]}…, recorded {want[:12]}…; re-ingest its input "
                     "with `xgen ingest`"), got
    return Check("part", path, "ok"), got


def _record_parts(corpus: Corpus, meta: dict, new: dict[tuple[str, str], str]) -> None:
    """Record ``new`` part SHA-256s in the registry (one write, which also stamps its own SHA-256)."""
    for v in meta["inputs"].values():
        for name in v["parts"]:
            if (v["subset"], name) in new:
                v.setdefault("part_sha256", {})[name] = new[(v["subset"], name)]
    corpus.write_meta(meta)


def _check_attribute_set(corpus: Corpus, key: str, state: dict, fingerprint: str, broken: set[str]) -> list[Check]:
    """Each file of the committed attribute set ``key`` against its SHA-256, then its ids against its part's;
    one ``ok`` / ``stale`` check for the set when no file has a problem."""
    gen = os.path.join(corpus.root, ATTRIBUTES, *key.split("/"), state["generation"])
    stale = state["parts"] != fingerprint
    out = []
    for rel, want in state["files"].items():
        path = os.path.join(gen, rel)
        part = os.path.join(corpus.root, "docs", rel)
        if not os.path.exists(path):
            out.append(Check("attributes", path, "missing", f"attribute set {key}; recompute it (xgen mix plan)"))
        elif fsutil.sha256_file(path) != want:
            out.append(Check("attributes", path, "damaged", f"attribute set {key}; recompute it "
                             "(xgen mix plan --recipe R, or xgen filter / xgen dedup)"))
        elif os.path.abspath(part) in broken:
            out.append(Check("attributes", path, "unchecked", f"attribute set {key}: its part {part} is "
                             "damaged, so its rows are not compared; verify again after re-ingesting it"))
        elif not stale and os.path.exists(part) and (why := attribute_rows_problem(path, part, ids=True)):
            out.append(Check("attributes", path, "damaged", f"{why}; attribute set {key}; delete {gen} "
                             "and recompute it (xgen mix plan --recipe R, or xgen filter / xgen dedup)"))
    if not out:
        out.append(Check("attributes", gen, "stale" if stale else "ok",
                         f"{state['step']} {params_hash(state['params'])}, {len(state['files'])} files"
                         + ("; computed from other part contents" if stale else "")))
    return out


def _check_shard_dir(shard_dir: str) -> list[Check]:
    """A registered shards folder: its manifest against its own SHA-256, every shard and index against theirs."""
    if not os.path.exists(shard_dir):
        if os.path.isdir(backup := shards.backup_dir(shard_dir)):
            return [Check("shards", shard_dir, "missing", f"a build into it was interrupted; the previous set is "
                          f"in {backup} and the next `xgen mix build` restores it")]
        return []  # otherwise removed by the user: not registered data any more
    mpath = os.path.join(shard_dir, "manifest.json")
    try:
        manifest = shards.read_manifest(shard_dir)
        problems = shards.verify(shard_dir)
    except shards.ShardError as exc:
        return [Check("shards", mpath if os.path.isfile(mpath) else shard_dir, "damaged", str(exc))]
    out = [Check("shards", shard_dir, "damaged", prob) for prob in problems]
    if shards.MANIFEST_SHA256 not in manifest:
        out.append(Check("shards", mpath, "unrecorded", f"no {shards.MANIFEST_SHA256} (built by an older "
                         "xgen): the manifest's own content is not verified; rebuild with `xgen mix build`"))
    elif not problems:
        out.append(Check("shards", shard_dir, "ok", "the manifest matches its manifest_sha256 and every "
                         "shard its sha256"))
    return out
