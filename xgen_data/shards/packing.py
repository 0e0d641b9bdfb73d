"""``xgen mix build``: pack the kept documents into shuffled fixed-length sequences (SPEC §2).

Planning (:func:`xgen_data.mixing.selection.plan_packing`) decides, per stage, seeded from the recipe seed:
which document instances each subset contributes (by sampling proportion), their uniformly shuffled stream
order, one chunk of ``n_sequences × seq_len`` tokens per sub-stage and each chunk's sequence permutation.
Packing (:func:`pack`) consumes that plan: it concatenates the instances' tokens into one stream, each document
followed by EOS (so EOS separates consecutive documents and is never doubled; long documents span sequences),
cuts the chunks, writes their sequences in the plan's order to shards (:mod:`xgen_data.shards.shard_format`).

Streams and chunks live in temporary memory-mapped files, so memory holds only per-document integers
(document offsets, instance order, permutations), never the tokens of the corpus. The output folder is
built under a temporary name and swapped in at the end by the shared folder publisher
(:class:`xgen_data.store.publish.FolderPublisher`: locked, foreign files refused, the previous set restored if
a crash interrupted the swap); the same corpus, recipe and seed give byte-identical shards. The
manifest records the recipe: name, SHA-256 and full TOML text.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tqdm.auto import tqdm

from xgen_data import tokenizer
from xgen_data.errors import InputError, ProblemFound, RefusedError
from xgen_data.execute.contract import Executor, ItemResult, StepReport, WorkItem, run_step
from xgen_data.execute.local import LocalExecutor
from xgen_data.mixing import pipeline, selection
from xgen_data.mixing.recipe import Recipe
from xgen_data.shards import shard_format as shards
from xgen_data.store import fsutil, locks, publish
from xgen_data.store.corpus import Corpus

SHARD_TOKENS = 1 << 25  # target tokens per shard file (64 MiB of uint16)


def _stage_tokens(corpus: Corpus, docs: selection.SubsetDocs, wanted: np.ndarray, path: str) -> np.ndarray:
    """Write the tokens of documents ``wanted`` (indices into ``docs``, sorted) to a uint16 file.

    Reads only the Parquet row groups that hold a wanted document, one row group at a time (ingest writes
    one per batch of documents), so memory holds one row group's tokens however large the parts are.

    Returns int64 offsets ``[len(docs) + 1]`` into that file (documents not wanted get length 0).
    """
    lengths = np.zeros(len(docs.n_tokens), dtype=np.int64)
    lengths[wanted] = docs.n_tokens[wanted]
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    out = _allocated_memmap(path, max(int(offsets[-1]), 1))
    codes = docs.part_code[wanted]
    for code in dict.fromkeys(codes.tolist()):
        sel = wanted[codes == code]
        pf = pq.ParquetFile(os.path.join(corpus.docs_dir(docs.name), docs.part_names[code]))
        _copy_tokens(pf, docs.row[sel], sel, offsets, out)  # parts were verified (sha256, or decoded) first
    out.flush()
    return offsets


def _copy_tokens(pf: pq.ParquetFile, rows: np.ndarray, dest: np.ndarray, offsets: np.ndarray,
                 out: np.ndarray) -> None:
    """Copy the token lists of rows ``rows`` of one part into ``out[offsets[d]:offsets[d + 1]]`` for the matching
    ``dest`` ids, reading only the row groups that hold them, one at a time."""
    md = pf.metadata
    rg_start = np.cumsum([0] + [md.row_group(i).num_rows for i in range(md.num_row_groups)])
    rg_of = np.searchsorted(rg_start, rows, side="right") - 1
    for rg in np.unique(rg_of).tolist():
        col = pf.read_row_group(rg, columns=["tokens"]).column("tokens").combine_chunks()
        values, starts = col.values.to_numpy(), col.offsets.to_numpy()
        for d, r in zip(dest[rg_of == rg].tolist(), (rows[rg_of == rg] - rg_start[rg]).tolist()):
            out[offsets[d]:offsets[d + 1]] = values[starts[r]:starts[r + 1]]


def _allocated_memmap(path: str, n_tokens: int) -> np.memmap:
    """A writable uint16 memmap whose disk blocks are reserved first (``posix_fallocate``).

    Raises:
        OSError: ENOSPC when the disk cannot hold it (writing into a sparse memmap on a full disk would
            kill the process with SIGBUS instead).
    """
    with open(path, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, n_tokens * shards.DTYPE.itemsize)
    return np.memmap(path, dtype=shards.DTYPE, mode="r+", shape=(n_tokens,))


@dataclass
class BuildReport:
    """What ``mix build`` wrote."""

    out_dir: str
    shards: int = 0
    sequences: dict[str, int] = field(default_factory=dict)  # "stage/substage" -> n_sequences
    tokens_per_subset: dict[str, Counter] = field(default_factory=dict)  # stage -> subset -> content tokens
    # stage -> subset -> language -> content tokens, for the subsets a stage weights by language
    tokens_per_language: dict[str, dict[str, Counter]] = field(default_factory=dict)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)  # e.g. the previous set restored after an interrupted build
    steps: list[StepReport] = field(default_factory=list)  # the pack step's report

    def to_dict(self) -> dict:
        """A JSON-ready dict (``--format json``)."""
        return {"out_dir": self.out_dir, "shards": self.shards, "sequences": dict(self.sequences),
                "tokens_per_subset": {k: dict(v) for k, v in self.tokens_per_subset.items()},
                "tokens_per_language": {k: {s: dict(c) for s, c in v.items()}
                                        for k, v in self.tokens_per_language.items()},
                "seconds": self.seconds, "notes": list(self.notes),
                "steps": [dataclasses.asdict(x) for x in self.steps]}


def _segments(pos: np.ndarray, take: np.ndarray, start: int, n_seq: int, seq_len: int):
    """Split content intervals ``[pos, pos + take)`` of the stream at sequence boundaries of one chunk.

    Returns ``(instance, seq, start_in_seq, length, doc_offset)`` int64 arrays for the pieces inside
    the chunk ``[start, start + n_seq × seq_len)``.
    """
    end = start + n_seq * seq_len
    a = np.maximum(pos, start)
    b = np.minimum(pos + take, end)
    inside = np.nonzero(b > a)[0]
    a, b = a[inside], b[inside]
    first = (a - start) // seq_len
    last = (b - 1 - start) // seq_len
    count = last - first + 1
    inst = np.repeat(inside, count)
    seq = np.repeat(first, count) + (np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count))
    lo = np.maximum(np.repeat(a, count), start + seq * seq_len)
    hi = np.minimum(np.repeat(b, count), start + (seq + 1) * seq_len)
    return inst, seq, lo - start - seq * seq_len, hi - lo, lo - pos[inst]


resolve_out_dir = publish.resolve_out_dir  # one behaviour for every published folder: a link's target is written


def check_out_dir(out_dir: str, corpus: Corpus) -> str:
    """The absolute output path with symbolic links resolved (a link named by ``--out`` is not replaced: the
    folder it points to is built and registered), if it is safe to (re)create as a shards directory.

    Raises:
        ValueError: ``out_dir`` is a file, is inside (or contains) the corpus, has no parent folder, or
            is an existing non-empty folder that is not a shards directory or holds files its manifest
            does not list (xgen never deletes what it did not write).
    """
    out = resolve_out_dir(out_dir)
    if os.path.exists(out) and not os.path.isdir(out):
        raise InputError(f"{out_dir}: exists and is not a directory")
    root = os.path.realpath(corpus.root)
    if out == root or out.startswith(root + os.sep) or root.startswith(out + os.sep):
        raise InputError(f"{out_dir}: the shards directory must be outside the corpus {root}")
    foreign = publish.foreign_files(out, _listed_files)
    if foreign is None:
        raise RefusedError(f"{out_dir}: folder exists, is not empty and is not a shards directory "
                           "(no valid manifest.json); choose another --out or empty it")
    if foreign:
        raise RefusedError(f"{out_dir}: holds files that its manifest does not list ({', '.join(foreign[:3])}"
                           f"{', …' if len(foreign) > 3 else ''}); a rebuild replaces the whole folder, so move "
                           "them away or choose another --out")
    if not os.path.isdir(os.path.dirname(out)):
        raise InputError(f"{out_dir}: parent folder {os.path.dirname(out)} does not exist")
    return out


def check_disk_space(recipe: Recipe, folder: str) -> None:
    """Refuse a build whose streams and shards (2 bytes a token, twice) cannot fit on the disk of ``folder``.

    Raises:
        ValueError: naming the bytes needed and free, e.g. ``xgen_data/recipes/xgen-7b.toml`` (1.6T tokens) on a laptop.
    """
    needed = 4 * max(st.tokens for st in recipe.stages) + 2 * sum(st.tokens for st in recipe.stages)
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise ProblemFound(f"recipe {recipe.name!r} packs {sum(st.tokens for st in recipe.stages):,} tokens: about "
                           f"{needed / 1e9:,.1f} GB of temporary stream and shards, but {folder} has {free / 1e9:,.1f} GB "
                           "free")


def _is_complete_set(folder: str) -> bool:
    """Whether ``folder`` holds a shards set whose manifest reads (a backup worth restoring)."""
    try:
        shards.read_manifest(folder)
    except shards.ShardError:
        return False
    return True


def _listed_files(folder: str) -> set[str] | None:
    """The files a shards folder's manifest names (manifest, shards, indexes); None: not a shards folder.

    Not the manifest's self-checksum: a set whose manifest was edited is what a rebuild repairs; the listed
    files only decide that nothing foreign is in the folder the rebuild replaces."""
    try:
        manifest = shards.read_manifest(folder, check_sha256=False)
    except shards.ShardError:
        return None
    return {"manifest.json"} | {e[k] for e in manifest["shards"] for k in ("path", "index_path") if e.get(k)}


def _legacy_backups(head: str, tail: str, names: list[str]) -> list[tuple[str, str]]:
    """Backups of older versions' swaps: ``.<out>-old.tmp-<pid>`` of a process that is gone."""
    prefix = f".{tail}-old.tmp-"
    return [(os.path.join(head, n),) * 2 for n in names if n.startswith(prefix) and n[len(prefix):].isdigit()
            and not fsutil.pid_alive(int(n[len(prefix):]))]


def publisher(out_dir: str) -> publish.FolderPublisher:
    """The :class:`~xgen_data.store.publish.FolderPublisher` of a shards folder (commit points ``build.*``)."""
    return publish.FolderPublisher(out_dir, listed_files=_listed_files, is_complete=_is_complete_set,
                                   what="shards", crash_prefix="build", legacy=_legacy_backups)


def recover_out_dir(out_dir: str) -> str | None:
    """Put back a complete shards set at ``out_dir`` after a killed rebuild, then remove the build's leftovers
    (:func:`xgen_data.store.publish.recover`; also a backup left by older versions, ``.<out>-old.tmp-<pid>`` of
    a dead process), holding the folder's writer lock. Returns a note saying what was restored, or None."""
    with locks.writer_lock(publish.lock_path(out_dir), f"shards folder {out_dir}"):
        return publish.recover(out_dir, _is_complete_set, _legacy_backups, "shards")


def build(corpus_dir: str, recipe: Recipe, out_dir: str, shard_tokens: int = SHARD_TOKENS,
          progress: bool = True) -> BuildReport:
    """Plan (:func:`xgen_data.mixing.selection.plan_packing`), then pack the plan into shards (see module
    docstring), under the corpus lock: no other command may rewrite decisions while they are packed.

    Args:
        corpus_dir: a corpus whose recipe attributes are current (the recipe flow computes them).
        out_dir: the shards directory to (re)create.
        shard_tokens: target tokens per shard file (a shard holds whole sequences).
    Raises:
        ValueError: a subset with a positive proportion has no kept documents.
        RefusedError: an unsafe ``out_dir`` (:func:`check_out_dir`), or another process writing it.
        CorpusError: not a corpus.
    """
    corpus = Corpus(corpus_dir)
    with corpus.lock():
        out_dir = resolve_out_dir(out_dir)
        with publisher(out_dir) as pub:  # locked; a killed earlier swap is restored first, even if this build fails
            docs = selection.recipe_documents(corpus_dir, recipe)
            corpus.verify_parts()  # the tokens packed below come from these parts
            out_dir = check_out_dir(out_dir, corpus)
            check_disk_space(recipe, os.path.dirname(out_dir))
            plan = selection.plan_packing(recipe, docs)
            return pack(corpus, plan, pub, shard_tokens, progress)


def build_recipe(corpus_dir: str, recipe: Recipe, out_dir: str, workers: int = 2, progress: bool = True,
                 executor: str = "local", ray_address: str | None = None):
    """The recipe flow (:func:`xgen_data.mixing.pipeline.apply_recipe_steps`; ``executor`` / ``ray_address`` say
    where dedup's signature items run), then :func:`build`, under one corpus lock (no other command can change
    the attributes between the check and the packing). Returns ``(StepsReport, BuildReport)``."""
    corpus = Corpus(corpus_dir)
    check_out_dir(out_dir, corpus)  # fail before any step runs
    with corpus.lock():
        steps = pipeline.apply_recipe_steps(corpus_dir, recipe, workers, progress, executor=executor,
                                            ray_address=ray_address)
        return steps, build(corpus_dir, recipe, out_dir, progress=progress)


@dataclass
class PackStep:
    """Packing as a step (:mod:`xgen_data.execute.contract`): one item per stage of ``plan``
    (:func:`pack_stage` writes the stage's shards into the publisher's temporary folder, under the stage's own
    names), and one commit: the manifest, the swap into the shards folder (``pub``, a
    :class:`~xgen_data.store.publish.FolderPublisher` entered by the caller) and the corpus registry."""

    corpus: Corpus
    plan: selection.PackPlan
    pub: publish.FolderPublisher
    shard_tokens: int = SHARD_TOKENS
    name: str = "mix build"
    item_fn: Callable[..., ItemResult] = None  # type: ignore[assignment]  (set below: pack_stage)

    def __post_init__(self) -> None:
        self.item_fn = pack_stage
        self.started = time.time()
        self.out_dir = self.pub.out
        self.tmp_dir = self.pub.begin()
        os.makedirs(os.path.join(self.tmp_dir, ".work"))

    def items(self) -> list[WorkItem]:
        return [WorkItem(f"stage {st.name}", (self.corpus.root, self.plan.docs, st, self.tmp_dir, self.shard_tokens))
                for st in self.plan.stages]

    def commit(self, results: list[ItemResult]) -> BuildReport:
        """Write the manifest (stages and shards in plan order), swap the folder in (crash points
        ``build.shards_written``, ``build.swapped``) and register it with the corpus."""
        plan = self.plan
        report = BuildReport(self.out_dir, notes=[self.pub.note] if self.pub.note else [])
        manifest = {"format": shards.FORMAT, "format_version": shards.FORMAT_VERSION, "recipe": plan.recipe_name,
                    "recipe_sha256": hashlib.sha256(plan.recipe_text.encode("utf-8")).hexdigest(),
                    "recipe_toml": plan.recipe_text, "seed": plan.seed,
                    "tokenizer": "xgen", "vocab_size": tokenizer.VOCAB_SIZE,
                    "padded_vocab_size": tokenizer.PADDED_VOCAB_SIZE, "eos_id": tokenizer.EOS_ID, "dtype": "uint16",
                    "plan": list(plan.mixture), "stages": [], "shards": [], "language_plan": list(plan.language_plan)}
        for r in results:
            part, stage_report = r.value
            manifest["stages"] += part["stages"]
            manifest["shards"] += part["shards"]
            report.sequences.update(stage_report.sequences)
            report.tokens_per_subset.update(stage_report.tokens_per_subset)
            report.tokens_per_language.update(stage_report.tokens_per_language)
        shutil.rmtree(os.path.join(self.tmp_dir, ".work"))
        manifest = shards.write_manifest(self.tmp_dir, manifest)  # stamped with its manifest_sha256
        fsutil.crash_point("build.shards_written")
        self.pub.commit()
        fsutil.crash_point("build.swapped")
        self.corpus.register_shard_dir(self.out_dir)
        report.shards = len(manifest["shards"])
        report.seconds = time.time() - self.started
        report.steps.append(StepReport.of(self.name, results, report.seconds))
        return report


class _NoBar:
    def update(self, n: int) -> None:
        pass


def pack_stage(corpus_root: str, docs: dict, stage: selection.StagePlan, tmp_dir: str,
               shard_tokens: int) -> ItemResult:
    """The work item of one stage: its stream, chunks and shards (``tmp_dir/<stage>/...``, with their indexes).

    Returns ``({"stages": [entry], "shards": [entries]}, BuildReport of this stage)`` as the value, and the
    stage's tokens packed as ``bytes`` / 2."""
    t0 = time.time()
    part, rep = {"stages": [], "shards": []}, BuildReport("")
    _pack_stage(Corpus(corpus_root), docs, stage, tmp_dir, part, rep, shard_tokens, _NoBar())
    tokens = sum(e["seq_len"] * e["n_sequences"] for e in part["shards"])
    return ItemResult(f"stage {stage.name}", value=(part, rep), documents=len(stage.instances.doc),
                      bytes=2 * tokens, seconds=time.time() - t0)


def pack(corpus: Corpus, plan: selection.PackPlan, pub: publish.FolderPublisher, shard_tokens: int = SHARD_TOKENS,
         progress: bool = True, executor: Executor | None = None) -> BuildReport:
    """Run the :class:`PackStep` of ``plan`` on ``executor`` (default: this process) and publish it through
    ``pub`` (entered; it removes the temporary folder unless committed). Call under the corpus lock.
    Raises ItemError naming a stage that failed (nothing is swapped in)."""
    step = PackStep(corpus, plan, pub, shard_tokens)
    with tqdm(total=len(plan.stages), unit="stage", desc="mix build", disable=None if progress else True,
              leave=False) as bar:
        return run_step(step, executor if executor is not None else LocalExecutor(workers=1), lambda r: bar.update(1))


def write_stream(corpus: Corpus, docs: dict[str, selection.SubsetDocs], subsets: list[str], inst: selection.Instances, work: str,
                 stage_name: str) -> str:
    """Write the stage stream (each instance's tokens, then EOS) to a memory-mapped file; return its path."""
    offsets, staged = {}, {}
    for k, name in enumerate(subsets):
        wanted = np.unique(inst.doc[inst.subset == k])
        path = os.path.join(work, f"{stage_name}-{name}.tokens")
        offsets[k] = _stage_tokens(corpus, docs[name], wanted, path)
        staged[k] = np.memmap(path, dtype=shards.DTYPE, mode="r")
    stream_path = os.path.join(work, f"{stage_name}.stream")
    stream = _allocated_memmap(stream_path, max(inst.stream_len, 1))
    for k, d, n, p in zip(inst.subset.tolist(), inst.doc.tolist(), inst.take.tolist(), inst.pos.tolist()):
        o = int(offsets[k][d])
        stream[p:p + n] = staged[k][o:o + n]
        stream[p + n] = tokenizer.EOS_ID
    stream.flush()
    return stream_path


def _pack_stage(corpus, docs, stage: selection.StagePlan, tmp_dir, manifest, report, shard_tokens, bar) -> None:
    inst = stage.instances
    stream_path = write_stream(corpus, docs, stage.subsets, inst, os.path.join(tmp_dir, ".work"), stage.name)
    stage_entry = {"name": stage.name, "tokens": stage.tokens, "stream_tokens": inst.stream_len, "substages": []}
    report.tokens_per_subset[stage.name] = Counter()
    report.tokens_per_language[stage.name] = {s: Counter() for s in stage.languages}
    for chunk in stage.chunks:
        _write_substage(docs, stage.subsets, inst, stream_path, chunk, stage.name, tmp_dir, manifest, report,
                        shard_tokens, bar)
        stage_entry["substages"].append(substage_entry(chunk.substage, chunk.n_sequences))
        report.sequences[f"{stage.name}/{chunk.substage.name}"] = chunk.n_sequences
    manifest["stages"].append(stage_entry)


def heldout_count(sub, n_seq: int) -> int:
    """Validation sequences of a sub-stage that packed ``n_seq`` sequences: the recipe's
    ``heldout_sequences``, fewer only when the stream came up short (at least one sequence stays train)."""
    return max(0, min(sub.heldout_sequences, n_seq - 1))


def substage_entry(sub, n_seq: int) -> dict:
    """Manifest entry of a sub-stage: ``n_sequences``/``n_tokens`` count every packed sequence; of those,
    ``validation_sequences`` are held out (``validation-NNNNN.bin``, ``"split": "validation"``) and the rest
    (``"split": "train"``) are the training budget."""
    return {"name": sub.name, "seq_len": sub.seq_len, "n_sequences": int(n_seq), "n_tokens": int(n_seq * sub.seq_len),
            "validation_sequences": heldout_count(sub, n_seq)}


def shard_ranges(n_seq: int, n_val: int, rows_per_shard: int) -> list[tuple[int, int, str, str]]:
    """``(row0, row1, file stem, split)`` of the shard files of one sub-stage, rows in shuffled order.

    Rows ``[0, n_seq - n_val)`` are the train split (``shard-NNNNN``); the last ``n_val`` rows of the
    seeded shuffle, a uniform sample of the sub-stage's sequences, are the validation split
    (``validation-NNNNN``). Both are cut into files of at most ``rows_per_shard`` rows.
    """
    out = []
    for split, stem, lo, hi in (("train", "shard", 0, n_seq - n_val), ("validation", "validation", n_seq - n_val, n_seq)):
        for k, r0 in enumerate(range(lo, hi, rows_per_shard)):
            out.append((r0, min(hi, r0 + rows_per_shard), f"{stem}-{k:05d}", split))
    return out


def _piece_columns(docs, subsets: list[str], sub: np.ndarray, doc: np.ndarray) -> tuple[list, list, list]:
    """``(doc_ids, sources, languages)`` of pieces whose instances are ``(sub[i], doc[i])``, in piece order."""
    ids, srcs, langs = [None] * len(sub), [None] * len(sub), [None] * len(sub)
    for k in np.unique(sub).tolist():
        at = np.flatnonzero(sub == k)
        d = docs[subsets[k]]
        for out, vals in ((ids, d.take("doc_id", doc[at])), (srcs, d.take("source", doc[at])),
                          (langs, d.language_of(doc[at]))):
            for i, v in zip(at.tolist(), vals):
                out[i] = v
    return ids, srcs, langs


def _write_substage(docs, subsets, inst: selection.Instances, stream_path, plan: selection.ChunkPlan, stage_name,
                    tmp_dir, manifest, report, shard_tokens, bar) -> None:
    """Steps 3-4 for one chunk: cut its sequences, put them in the plan's order, write shards and indexes."""
    sub, chunk_start, n_seq, perm = plan.substage, plan.start, plan.n_sequences, plan.permutation
    seq_len = sub.seq_len
    chunk = np.memmap(stream_path, dtype=shards.DTYPE, mode="r", offset=chunk_start * 2, shape=(n_seq, seq_len))
    inv = np.empty_like(perm)
    inv[perm] = np.arange(n_seq)
    piece_inst, seq, start, length, doc_off = _segments(inst.pos, inst.take, chunk_start, n_seq, seq_len)
    post = inv[seq]
    by_post = np.lexsort((start, post))
    piece_inst, seq, start, length, doc_off, post = (x[by_post] for x in (piece_inst, seq, start, length, doc_off, post))
    rows_per_shard = max(1, shard_tokens // seq_len)
    folder = os.path.join(stage_name, sub.name)
    os.makedirs(os.path.join(tmp_dir, folder), exist_ok=True)
    for r0, r1, name, split in shard_ranges(n_seq, heldout_count(sub, n_seq), rows_per_shard):
        data = np.ascontiguousarray(chunk[perm[r0:r1]])
        rel = os.path.join(folder, f"{name}.bin")
        with open(os.path.join(tmp_dir, rel), "wb") as f:
            f.write(data.tobytes())
        lo, hi = np.searchsorted(post, [r0, r1])
        sl = slice(lo, hi)
        pieces = piece_inst[sl]
        sub_names = [subsets[k] for k in inst.subset[pieces].tolist()]
        doc_ids, sources, langs = _piece_columns(docs, subsets, inst.subset[pieces], inst.doc[pieces])
        index = pa.table({
            "row": pa.array(post[sl] - r0, pa.int64()), "start": pa.array(start[sl], pa.int32()),
            "length": pa.array(length[sl], pa.int32()), "subset": pa.array(sub_names, pa.string()),
            "doc_id": pa.array(doc_ids, pa.string()), "source": pa.array(sources, pa.string()),
            "doc_offset": pa.array(doc_off[sl], pa.int64()), "pre_shuffle_seq": pa.array(seq[sl], pa.int64()),
        }, schema=shards.INDEX_SCHEMA)
        rel_idx = os.path.join(folder, f"{name}.idx.parquet")
        pq.write_table(index, os.path.join(tmp_dir, rel_idx), compression="zstd")
        per_subset, per_source = Counter(), Counter()
        for name, src, n in zip(sub_names, sources, length[sl].tolist()):
            per_subset[name] += n
            per_source[src] += n
        report.tokens_per_subset[stage_name].update(per_subset)
        by_lang = report.tokens_per_language.get(stage_name, {})
        for name, lang, n in zip(sub_names, langs, length[sl].tolist()):
            if name in by_lang:
                by_lang[name][lang] += n
        manifest["shards"].append({
            "path": rel, "index_path": rel_idx, "stage": stage_name, "substage": sub.name, "split": split,
            "seq_len": seq_len,
            "n_sequences": int(r1 - r0), "sha256": hashlib.sha256(data.tobytes()).hexdigest(),
            "index_sha256": fsutil.sha256_file(os.path.join(tmp_dir, rel_idx)),
            "tokens_per_subset": dict(sorted(per_subset.items())),
            "tokens_per_source": dict(sorted(per_source.items())),
            "eos_tokens": int(data.size - sum(per_subset.values())),
        })
        bar.update(int(data.size))
