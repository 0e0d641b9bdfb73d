"""``xgen verify``: check every file the corpus registry names against its recorded SHA-256.

Checked (:func:`verify_corpus`):

* ``registry``: ``corpus.json`` against its own ``registry_sha256`` (checked by every read; an edited or
  damaged registry, or a 0.x one without the field or a part's SHA-256, is refused, naming the file and the
  rebuild: :meth:`xgen_data.store.corpus.Corpus.read_meta`).
* ``part``: each registered docs part against ``inputs[key]["part_sha256"]`` (recorded at ingest).
* ``attributes``: each file of each committed attribute set against the SHA-256 recorded at its commit
  (:meth:`xgen_data.store.corpus.Corpus.commit_attributes`), and the ids of each file of a current set against
  its part's, in order (the ``documents`` view pairs them by position; readers check only the row
  counts); a set computed from other part contents is reported ``stale`` (not damage: the recipe flow
  recomputes it).
* ``shards``: each registered shards folder's ``manifest.json`` against its own ``manifest_sha256`` (an edited
  manifest, or a 0.x one without the field, is ``damaged``, naming the file), and every
  shard's size and SHA-256 in it, and its ``.idx.parquet`` index's SHA-256 (``index_sha256``;
  :func:`xgen_data.shards.shard_format.verify`).

Statuses: ``ok``, ``stale`` (fine), ``unchecked`` (an attribute file whose own
SHA-256 matches but whose part is damaged or missing, so its ids are not compared: the part is the damage; or
``corpus.json`` listing the shards folders of the corpus this one was copied from, which are left out) and
``damaged``, ``missing`` (damage).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from xgen_data.shards import shard_format as shards
from xgen_data.store import fsutil
from xgen_data.store.corpus import ATTRIBUTES, REGISTRY_SHA256, Corpus, attribute_rows_problem, params_hash

DAMAGE = ("damaged", "missing")


@dataclass(frozen=True)
class Check:
    """The result for one file: ``kind`` (part, attributes, shards), ``path``, ``status``, ``detail``."""

    kind: str
    path: str
    status: str
    detail: str = ""


def verify_corpus(corpus_dir: str, progress: bool = False) -> list[Check]:
    """Check the corpus's parts, attribute files and registered shard folders (module docstring).

    Raises:
        CorpusError: not a corpus, or ``corpus.json`` does not parse, is malformed, of the 0.x format or does not
            match its checksum (:meth:`xgen_data.store.corpus.Corpus.read_meta`).
    """
    corpus = Corpus(corpus_dir)
    with corpus.lock():
        meta = corpus.read_meta()  # refuses a registry that does not match its registry_sha256
        out = [Check("registry", corpus.meta_path, "ok", f"matches its {REGISTRY_SHA256}")]
        parts, broken = _check_parts(corpus, meta, progress)
        out += parts
        fingerprint = corpus.parts_fingerprint()
        for key, state in sorted(meta.get("attributes", {}).items()):
            out += _check_attribute_set(corpus, key, state, fingerprint, broken)
        own_shard_dirs, note = corpus.shard_dirs(meta)
        if note:
            out.append(Check("shards", corpus.meta_path, "unchecked", note))
        for shard_dir in own_shard_dirs:
            out += _check_shard_dir(shard_dir)
    return out


def _check_parts(corpus: Corpus, meta: dict, progress: bool) -> tuple[list[Check], set[str]]:
    """``(checks, broken)``: a check per registered part against its recorded SHA-256, and the absolute paths
    of the damaged or missing ones (their attribute rows cannot be checked)."""
    from tqdm.auto import tqdm

    recorded = corpus.recorded_sha256(meta)
    out: list[Check] = []
    broken: set[str] = set()
    for p in tqdm(corpus.parts(), desc="verify parts", unit="part", disable=None if progress else True, leave=False):
        want = recorded[(p.subset, p.name)]
        cmd = corpus.reingest_command(meta, p)
        repair = "re-ingest its input" + (f": `{cmd}`" if cmd else " with `xgen ingest`")
        if not os.path.exists(p.path):
            out.append(Check("part", p.path, "missing", repair))
        elif (got := fsutil.sha256_file(p.path)) != want:
            out.append(Check("part", p.path, "damaged", f"sha256 {got[:12]}…, recorded {want[:12]}…; {repair}"))
        else:
            out.append(Check("part", p.path, "ok"))
            continue
        broken.add(os.path.abspath(p.path))
    return out, broken


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
        shards.read_manifest(shard_dir)  # its own manifest_sha256 first
        problems = shards.verify(shard_dir)
    except shards.ShardError as exc:
        return [Check("shards", mpath if os.path.isfile(mpath) else shard_dir, "damaged", str(exc))]
    out = [Check("shards", shard_dir, "damaged", prob) for prob in problems]
    if not problems:
        out.append(Check("shards", shard_dir, "ok", "the manifest matches its manifest_sha256 and every "
                         "shard its sha256"))
    return out
