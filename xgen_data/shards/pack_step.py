"""Packing as two steps on the contract (:mod:`xgen_data.execute.contract`): token staging per part, then shards
per group of shard files; the second step's commit writes the manifest and swaps the folder in.

The plan (:class:`~xgen_data.mixing.selection.PackPlan`) fixes every token's place before any item runs: a
stage's stream is its instances in order, each instance's first ``take`` tokens then EOS, instance ``i`` from
stream token ``pos[i]`` (``pos`` is the running sum of ``take + 1``); each sub-stage's chunk is a range of that
stream cut into sequences, and its permutation orders them. So no item carries state from another:

1. :class:`StageTokensStep`: per stage, subset and docs part, the documents the stage uses get places in the
   part's own staged file (``.work/<stage>-<subset>-<part code>.tokens``, token offsets from the documents'
   lengths, in document order); one item per file (:func:`stage_part_tokens`) copies them there, reading only
   the row groups that hold them. No two items write the same file (nor the same page of one).
2. :class:`PackStep`: one item per :data:`SHARDS_PER_ITEM` shard files of a sub-stage (:func:`pack_shards`).
   The step cuts the chunk into pieces (:func:`segments`: each piece one instance's tokens inside one
   sequence) and hands each item the pieces of its rows; the item fills its rows with EOS, copies the pieces
   from the staged files, and writes the shard files and their indexes. Every position of a sequence that no
   piece covers is an instance's EOS, because chunks lie inside the stream.

Shard boundaries come from the plan (:func:`shard_ranges`), never from the number of items or workers; the
commit lists the shards in plan order, so any executor, item grouping and order gives the same bytes.
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

from xgen_data import tokenizer
from xgen_data.execute.contract import ItemResult, StepReport, WorkItem
from xgen_data.mixing import selection
from xgen_data.shards import shard_format as shards
from xgen_data.store import fsutil, publish
from xgen_data.store.corpus import Corpus

#: Shard files per item of :class:`PackStep` (a sub-stage's files cut into groups of this many).
SHARDS_PER_ITEM = 4


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
    steps: list[StepReport] = field(default_factory=list)  # the packing steps' reports

    def to_dict(self) -> dict:
        """A JSON-ready dict (``--format json``)."""
        return {"out_dir": self.out_dir, "shards": self.shards, "sequences": dict(self.sequences),
                "tokens_per_subset": {k: dict(v) for k, v in self.tokens_per_subset.items()},
                "tokens_per_language": {k: {s: dict(c) for s, c in v.items()}
                                        for k, v in self.tokens_per_language.items()},
                "seconds": self.seconds, "notes": list(self.notes),
                "steps": [dataclasses.asdict(x) for x in self.steps]}


def reserve_tokens(path: str, n_tokens: int) -> None:
    """Create ``path`` with its disk blocks reserved for ``n_tokens`` uint16 tokens (``posix_fallocate``).

    Raises:
        OSError: ENOSPC when the disk cannot hold it (writing into a sparse memmap on a full disk would
            kill the process with SIGBUS instead).
    """
    with open(path, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, n_tokens * shards.DTYPE.itemsize)


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


def stage_part_tokens(part_path: str, rows: np.ndarray, lengths: np.ndarray, staged_path: str) -> ItemResult:
    """The work item of one docs part for one stage and subset: the tokens of part rows ``rows`` (int64, their
    token counts ``lengths``), one after another, into its own staged file ``staged_path`` (reserved on disk
    first, :func:`reserve_tokens`). The parts were verified (SHA-256, or decoded) before the step."""
    t0 = time.time()
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    reserve_tokens(staged_path, max(int(offsets[-1]), 1))
    out = np.memmap(staged_path, dtype=shards.DTYPE, mode="r+")
    _copy_tokens(pq.ParquetFile(part_path), rows, np.arange(len(rows)), offsets, out)
    out.flush()
    return ItemResult(f"tokens {os.path.basename(part_path)}", documents=int(len(rows)), bytes=2 * int(offsets[-1]),
                      seconds=time.time() - t0)


@dataclass
class StagedTokens:
    """Where a stage's staged tokens are: ``files`` (one per subset and part), and per subset ``k`` of the
    stage's sorted subsets, per document, ``file[k]`` (int32 index into ``files``, -1 for documents the stage
    does not use) and ``offset[k]`` (int64 token offset in that file)."""

    files: list[str] = field(default_factory=list)
    file: list[np.ndarray] = field(default_factory=list)
    offset: list[np.ndarray] = field(default_factory=list)


@dataclass
class StageTokensStep:
    """Step 1 (module docstring): creating it lays out the staged files of every stage, subset and part under
    ``work`` (``staged[stage]``, a :class:`StagedTokens`), one item per file (:func:`stage_part_tokens`)."""

    corpus: Corpus
    plan: selection.PackPlan
    work: str
    name: str = "mix build tokens"
    item_fn: Callable[..., ItemResult] = stage_part_tokens
    started: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        self.staged: dict[str, StagedTokens] = {}
        self._items: list[WorkItem] = []
        for st in self.plan.stages:
            self.staged[st.name] = StagedTokens()
            for k, name in enumerate(st.subsets):
                self._lay_out(st, k, name, self.staged[st.name])

    def _lay_out(self, st: selection.StagePlan, k: int, name: str, out: StagedTokens) -> None:
        """Subset ``k``'s used documents, part by part in document order, each part's in one file."""
        docs = self.plan.docs[name]
        wanted = np.unique(st.instances.doc[st.instances.subset == k])
        file = np.full(len(docs.n_tokens), -1, dtype=np.int32)
        offset = np.zeros(len(docs.n_tokens), dtype=np.int64)
        codes = docs.part_code[wanted]
        for code in dict.fromkeys(codes.tolist()):
            sel = wanted[codes == code]
            lengths = docs.n_tokens[sel].astype(np.int64)
            file[sel] = len(out.files)
            offset[sel] = np.cumsum(lengths) - lengths
            path = os.path.join(self.work, f"{st.name}-{name}-{code:06d}.tokens")
            part = os.path.join(self.corpus.docs_dir(name), docs.part_names[code])
            self._items.append(WorkItem(f"tokens {st.name}/{name}/{docs.part_names[code]}",
                                        (part, docs.row[sel], lengths, path)))
            out.files.append(path)
        out.file.append(file)
        out.offset.append(offset)

    def items(self) -> list[WorkItem]:
        return self._items

    def commit(self, results: list[ItemResult]) -> StepReport:
        """Nothing to publish: the staged files are the next step's input (the build's temporary folder)."""
        return StepReport.of(self.name, results, time.time() - self.started)


def segments(pos: np.ndarray, take: np.ndarray, start: int, n_seq: int, seq_len: int):
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


def chunk_pieces(docs: dict, stage: selection.StagePlan, chunk: selection.ChunkPlan, staged: StagedTokens) -> dict:
    """The pieces of one sub-stage chunk (:func:`segments`), ordered by output row then start in the row:
    ``post`` (output row), ``start``, ``length``, ``doc_offset``, ``seq`` (pre-shuffle sequence), ``subset``
    (index into the stage's subsets), ``file`` and ``src`` (the staged file, index into ``staged.files``, and
    the token offset of the piece in it), and the pieces' ``doc_id``, ``source`` and ``language`` lists."""
    inst, seq_len, n_seq = stage.instances, chunk.substage.seq_len, chunk.n_sequences
    piece_inst, seq, start, length, doc_off = segments(inst.pos, inst.take, chunk.start, n_seq, seq_len)
    inv = np.empty_like(chunk.permutation)
    inv[chunk.permutation] = np.arange(n_seq)
    post = inv[seq]
    order = np.lexsort((start, post))
    piece_inst, seq, start, length, doc_off, post = (x[order] for x in (piece_inst, seq, start, length, doc_off, post))
    k, doc = inst.subset[piece_inst], inst.doc[piece_inst]
    file, src = np.zeros(len(k), dtype=np.int64), np.zeros(len(k), dtype=np.int64)
    for j in np.unique(k).tolist():
        at = k == j
        file[at] = staged.file[j][doc[at]]
        src[at] = staged.offset[j][doc[at]] + doc_off[at]
    doc_ids, sources, langs = _piece_columns(docs, stage.subsets, k, doc)
    return {"post": post, "start": start, "length": length, "doc_offset": doc_off, "seq": seq, "subset": k,
            "file": file, "src": src, "doc_id": doc_ids, "source": sources, "language": langs}


def _slice(pieces: dict, lo: int, hi: int) -> dict:
    return {key: v[lo:hi] for key, v in pieces.items()}


def pack_shards(tmp_dir: str, stage: str, substage: str, seq_len: int, ranges: list[tuple[int, int, str, str]],
                pieces: dict, subsets: list[str], staged: list[str], languages: tuple[str, ...]) -> ItemResult:
    """The work item of a group of shard files of one sub-stage (``ranges``, from :func:`shard_ranges`).

    Fills rows ``[ranges[0][0], ranges[-1][1])`` with EOS, copies each piece (:func:`chunk_pieces`, those of
    these rows) from staged file ``staged[pieces["file"]]`` at ``pieces["src"]``, then writes
    each file's sequences (``tmp_dir/<stage>/<substage>/<stem>.bin``) and index (``.idx.parquet``,
    :data:`~xgen_data.shards.shard_format.INDEX_SCHEMA`). Returns value ``{"shards": manifest entries,
    "tokens_per_subset": Counter, "tokens_per_language": {subset: Counter}}`` (``languages``: the subsets
    reported per language); ``bytes`` = shard bytes written."""
    t0 = time.time()
    folder = os.path.join(stage, substage)
    row0 = ranges[0][0]
    rows = np.full((ranges[-1][1] - row0, seq_len), tokenizer.EOS_ID, dtype=shards.DTYPE)
    maps = {f: np.memmap(staged[f], dtype=shards.DTYPE, mode="r") for f in np.unique(pieces["file"]).tolist()}
    for r, s, n, f, o in zip((pieces["post"] - row0).tolist(), pieces["start"].tolist(), pieces["length"].tolist(),
                             pieces["file"].tolist(), pieces["src"].tolist()):
        rows[r, s:s + n] = maps[f][o:o + n]
    value = {"shards": [], "tokens_per_subset": Counter(), "tokens_per_language": {s: Counter() for s in languages}}
    written = 0
    for r0, r1, name, split in ranges:
        lo, hi = np.searchsorted(pieces["post"], [r0, r1])
        data = np.ascontiguousarray(rows[r0 - row0:r1 - row0])
        entry = {"path": os.path.join(folder, f"{name}.bin"), "index_path": os.path.join(folder, f"{name}.idx.parquet"),
                 "stage": stage, "substage": substage, "split": split, "seq_len": seq_len}
        value["shards"].append(_write_shard(tmp_dir, entry, data, _slice(pieces, lo, hi), r0, subsets, value))
        written += data.nbytes
    return ItemResult(f"shards {folder}/{ranges[0][2]}", value=value, documents=int(len(pieces["post"])),
                      bytes=written, seconds=time.time() - t0)


def _write_shard(tmp_dir: str, entry: dict, data: np.ndarray, pieces: dict, r0: int, subsets: list[str],
                 value: dict) -> dict:
    """One shard file and its index (``entry``'s paths); adds its tokens to ``value``'s counters; returns its
    manifest entry (``entry`` completed)."""
    with open(os.path.join(tmp_dir, entry["path"]), "wb") as f:
        f.write(data.tobytes())
    sub_names = [subsets[k] for k in pieces["subset"].tolist()]
    index = pa.table({
        "row": pa.array(pieces["post"] - r0, pa.int64()), "start": pa.array(pieces["start"], pa.int32()),
        "length": pa.array(pieces["length"], pa.int32()), "subset": pa.array(sub_names, pa.string()),
        "doc_id": pa.array(pieces["doc_id"], pa.string()), "source": pa.array(pieces["source"], pa.string()),
        "doc_offset": pa.array(pieces["doc_offset"], pa.int64()), "pre_shuffle_seq": pa.array(pieces["seq"], pa.int64()),
    }, schema=shards.INDEX_SCHEMA)
    pq.write_table(index, os.path.join(tmp_dir, entry["index_path"]), compression="zstd")
    per_subset, per_source = Counter(), Counter()
    lengths = pieces["length"].tolist()
    for sub, src, n in zip(sub_names, pieces["source"], lengths):
        per_subset[sub] += n
        per_source[src] += n
    value["tokens_per_subset"].update(per_subset)
    for sub, lang, n in zip(sub_names, pieces["language"], lengths):
        if sub in value["tokens_per_language"]:
            value["tokens_per_language"][sub][lang] += n
    return {**entry, "n_sequences": int(len(data)), "sha256": hashlib.sha256(data.tobytes()).hexdigest(),
            "index_sha256": fsutil.sha256_file(os.path.join(tmp_dir, entry["index_path"])),
            "tokens_per_subset": dict(sorted(per_subset.items())), "tokens_per_source": dict(sorted(per_source.items())),
            "eos_tokens": int(data.size - sum(per_subset.values()))}


@dataclass
class PackStep:
    """Step 2 (module docstring): one item per :data:`SHARDS_PER_ITEM` shard files of a sub-stage
    (:func:`pack_shards`), in plan order; one commit: the manifest (stages and shards in plan order), the swap
    into the shards folder (``pub``, a :class:`~xgen_data.store.publish.FolderPublisher` entered and begun by
    the caller, its temporary folder ``tmp_dir``) and the corpus registry. ``staged``: the
    :class:`StageTokensStep`'s files."""

    corpus: Corpus
    plan: selection.PackPlan
    pub: publish.FolderPublisher
    tmp_dir: str
    staged: dict[str, StagedTokens]
    shard_tokens: int
    name: str = "mix build"
    item_fn: Callable[..., ItemResult] = pack_shards
    started: float = field(default_factory=time.time)

    def items(self) -> list[WorkItem]:
        out = []
        for st in self.plan.stages:
            for chunk in st.chunks:
                out += self._chunk_items(st, chunk, self.staged[st.name])
        return out

    def _chunk_items(self, st: selection.StagePlan, chunk: selection.ChunkPlan, staged: StagedTokens) -> list[WorkItem]:
        sub = chunk.substage
        os.makedirs(os.path.join(self.tmp_dir, st.name, sub.name), exist_ok=True)
        ranges = shard_ranges(chunk.n_sequences, heldout_count(sub, chunk.n_sequences),
                              max(1, self.shard_tokens // sub.seq_len))
        if not ranges:
            return []
        pieces = chunk_pieces(self.plan.docs, st, chunk, staged)
        out = []
        for i in range(0, len(ranges), SHARDS_PER_ITEM):
            group = ranges[i:i + SHARDS_PER_ITEM]
            lo, hi = np.searchsorted(pieces["post"], [group[0][0], group[-1][1]])
            out.append(WorkItem(f"shards {st.name}/{sub.name}/{group[0][2]}",
                                (self.tmp_dir, st.name, sub.name, sub.seq_len, group, _slice(pieces, lo, hi),
                                 st.subsets, staged.files, st.languages)))
        return out

    def commit(self, results: list[ItemResult]) -> BuildReport:
        """Write the manifest, swap the folder in (crash points ``build.shards_written``, ``build.swapped``) and
        register it with the corpus; returns the build's report (this step's report in ``steps``)."""
        report = BuildReport(self.pub.out, notes=[self.pub.note] if self.pub.note else [])
        manifest = self._manifest_head()
        for st in self.plan.stages:
            manifest["stages"].append({"name": st.name, "tokens": st.tokens, "stream_tokens": st.instances.stream_len,
                                       "substages": [substage_entry(c.substage, c.n_sequences) for c in st.chunks]})
            report.tokens_per_subset[st.name] = Counter()
            report.tokens_per_language[st.name] = {s: Counter() for s in st.languages}
            for c in st.chunks:
                report.sequences[f"{st.name}/{c.substage.name}"] = c.n_sequences
        for r in results:
            stage = r.value["shards"][0]["stage"]
            manifest["shards"] += r.value["shards"]
            report.tokens_per_subset[stage].update(r.value["tokens_per_subset"])
            for sub, counts in r.value["tokens_per_language"].items():
                report.tokens_per_language[stage][sub].update(counts)
        shutil.rmtree(os.path.join(self.tmp_dir, ".work"))
        manifest = shards.write_manifest(self.tmp_dir, manifest)  # stamped with its manifest_sha256
        fsutil.crash_point("build.shards_written")
        self.pub.commit()
        fsutil.crash_point("build.swapped")
        self.corpus.register_shard_dir(self.pub.out)
        report.shards = len(manifest["shards"])
        report.seconds = time.time() - self.started
        report.steps.append(StepReport.of(self.name, results, report.seconds))
        return report

    def _manifest_head(self) -> dict:
        plan = self.plan
        return {"format": shards.FORMAT, "format_version": shards.FORMAT_VERSION, "recipe": plan.recipe_name,
                "recipe_sha256": hashlib.sha256(plan.recipe_text.encode("utf-8")).hexdigest(),
                "recipe_toml": plan.recipe_text, "seed": plan.seed,
                "tokenizer": "xgen", "vocab_size": tokenizer.VOCAB_SIZE,
                "padded_vocab_size": tokenizer.PADDED_VOCAB_SIZE, "eos_id": tokenizer.EOS_ID, "dtype": "uint16",
                "plan": list(plan.mixture), "stages": [], "shards": [], "language_plan": list(plan.language_plan)}
