"""``xgen sft prepare``: instruction data in any known shape -> rendered, masked, decontaminated, packed SFT shards.

Flow per input record (file:line known throughout): decode JSON -> recognise the shape and build conversations
(:mod:`xgen_data.sft.shapes`) -> drop those that overlap an evaluation set (:mod:`xgen_data.sft.decontam`) ->
render (SPEC §5, :mod:`xgen_data.sft.render`) and tokenize with the loss mask (:mod:`xgen_data.sft.masking`).
Then the overlong rule, best-fit-decreasing packing (:mod:`xgen_data.sft.pack`) and the shard folder
(:mod:`xgen_data.sft.sft_format`), written next to ``--out`` and swapped in (a kill leaves the old folder or
the new one). Pre-training filters (length, license, dedup) do not apply here.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from xgen_data.errors import InputError
from xgen_data.sft import decontam, masking, pack, render, sft_format, shapes
from xgen_data.sources import readers
from xgen_data.store import publish
from xgen_data.tokenizer import EOS_ID, PADDED_VOCAB_SIZE, VOCAB_SIZE

MAX_ERRORS_KEPT = 20  # skipped-record messages kept in the manifest per input


@dataclass
class Options:
    """Settings of one ``xgen sft prepare`` (each is a CLI option of the same name)."""

    seq_len: int = 8192
    seed: int = 0
    overlong: str = "drop"  # or "truncate"
    on_error: str = "raise"  # or "skip": count and report bad records
    system_header: bool = False  # SPEC §5: off by default (system messages are then left out, counted)
    oasst_all_paths: bool = False  # every root->leaf path instead of the best-ranked one
    trim_unanswered: bool = False  # drop a last human turn without a response instead of failing
    decontaminate: list[str] = field(default_factory=list)  # evaluation set JSONL files
    validation_rows: int = 0  # packed rows held out as the validation split (the first rows in the seeded order)
    rows_per_shard: int = 4096


@dataclass
class Examples:
    """Everything read from the inputs: encoded examples, their index fields, removals and counts."""

    ids: list[np.ndarray] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    meta: list[tuple[str, str, str]] = field(default_factory=list)  # (example_id, source, shape)
    removed: list[dict] = field(default_factory=list)
    sources: list[dict] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)


def _text_of(conv: shapes.Conversation) -> str:
    """What decontamination compares: every prompt and response (SPEC §5: the example's prompt and response)."""
    return "\n".join(f"{p}\n{r}" for p, r in conv.turns)


def _record_convs(raw: readers.RawRecord, opts: Options) -> tuple[str, str, list[shapes.Conversation]]:
    """(shape, record id, conversations) of one raw record; ShapeError / ValueError name the problem."""
    try:
        record = json.loads(raw.payload) if isinstance(raw.payload, bytes) else raw.payload
    except json.JSONDecodeError as exc:
        raise shapes.ShapeError(f"not valid JSON: {readers.json_error_text(exc)}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise shapes.ShapeError(f"not valid JSON: {exc}") from None
    except RecursionError:
        raise shapes.ShapeError("malformed JSON: nested too deeply") from None
    try:
        shape, convs = shapes.conversations(record, not opts.oasst_all_paths, opts.trim_unanswered)
    except RecursionError:  # a message tree thousands of replies deep
        raise shapes.ShapeError("a message tree nested too deeply") from None
    rid = record.get("id") if isinstance(record.get("id"), str) else f"{raw.file}:{raw.line}"
    return shape, rid, convs


def _add(ex: Examples, conv: shapes.Conversation, ident: tuple[str, str, str], index, opts: Options) -> None:
    hit = decontam.find(_text_of(conv), index) if index is not None else None
    if hit is not None:
        ex.removed.append({"example_id": ident[0], "source": ident[1], "benchmark": hit.benchmark,
                           "eval_item_id": hit.eval_item_id, "match_kind": hit.kind, "match": hit.match})
        ex.counts["removed_decontaminated"] += 1
        return
    ids, mask = masking.encode_pieces(render.pieces(conv, opts.system_header))
    ex.ids.append(ids)
    ex.masks.append(mask)
    ex.meta.append(ident)
    ex.counts["system_left_out"] += bool(conv.system) and not opts.system_header
    ex.counts["trimmed_unanswered"] += conv.trimmed


def read_inputs(paths: list[str], opts: Options, index: decontam.EvalIndex | None) -> Examples:
    """Read every input file into :class:`Examples`.

    A truncated ``.gz`` / ``.zst`` (a cut file) is handled as ``xgen ingest`` does
    (:func:`xgen_data.sources.readers.past_broken_stream`): with ``on_error == "skip"`` the records before the
    cut are kept, the break is counted (``truncated_stream``) and listed with its file and line in the source's
    ``errors`` and ``broken_stream``, and the next file is read.

    Raises:
        InputError: naming file:line for a bad record (``on_error == "raise"``), or the file when it cannot be
            read (missing, unsupported suffix) or is given twice (same real path).
        StreamError (an InputError): a truncated stream (``on_error == "raise"``) or a corrupt one (either mode),
            naming the file, the line where it broke and the last good line.
    """
    seen: dict[str, str] = {}
    for path in paths:  # one file twice would count and pack its examples twice
        if (real := os.path.realpath(path)) in seen:
            raise InputError(f"{path}: the same file as the input {seen[real]} (given twice); give each input once")
        seen[real] = path
    ex = Examples()
    for path in paths:
        if not os.path.isfile(path):
            raise InputError(f"{path}: no such input file")
        try:
            readers.input_format(path)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        with contextlib.closing(readers.open_input(path)) as opened:  # one open file: hashed, then read
            ex.sources.append(_read_opened(opened, opts, index, ex))
    return ex


def _read_opened(opened: readers.OpenedInput, opts: Options, index: decontam.EvalIndex | None,
                 ex: Examples) -> dict:
    """Add one opened input's examples to ``ex``; return its source record (``sha256`` of the bytes read).

    A sequential (JSONL) read hashes what it reads; Parquet is read at random offsets and its ``fstat`` is
    compared instead (:meth:`readers.OpenedInput.check_unchanged`: a file changed meanwhile is an InputError).
    """
    path = opened.path
    sequential = readers.input_format(path) != "parquet"
    source = readers.HashingReader(opened.file) if sequential else opened.file
    src = {"path": path, "records": 0, "examples": 0, "skipped": 0, "shapes": Counter(), "errors": []}
    try:
        for raw in readers.iter_raw(path, fileobj=source):
            src["records"] += 1
            try:
                shape, rid, convs = _record_convs(raw, opts)
            except (shapes.ShapeError, KeyError) as exc:
                msg = f"{path}:{raw.line}: {exc}"
                if opts.on_error == "raise":
                    raise InputError(f"{msg} (or use --on-error skip)") from None
                src["skipped"] += 1
                if len(src["errors"]) < MAX_ERRORS_KEPT:
                    src["errors"].append(msg)
                continue
            src["shapes"][shape] += len(convs)
            src["examples"] += len(convs)
            for k, conv in enumerate(convs):
                ident = (rid if len(convs) == 1 else f"{rid}/path-{k}", path, shape)
                _add(ex, conv, ident, index, opts)
    except readers.StreamError as exc:  # the file itself is broken: a cut one is passed with --on-error skip
        note = readers.past_broken_stream(exc, opts.on_error, "used")
        ex.counts["truncated_stream"] += 1  # the records before the cut are exact and kept
        src["broken_stream"] = note
        src["errors"].append(note)
    if sequential:
        source.drain()
    opened.check_unchanged(source.hexdigest() if sequential else None)
    src["sha256"] = opened.sha256
    src["shapes"] = dict(src["shapes"])
    return src


def _index_table(ex: Examples, rows: list[list[int]], packing: pack.Packing) -> pa.Table:
    truncated = set(packing.truncated)
    cols = {k: [] for k in sft_format.INDEX_SCHEMA.names}
    for r, row in enumerate(rows):
        at = 0
        for j, i in enumerate(row):
            n = int(packing.lengths[i])
            vals = (r, j + 1, at, n, int(ex.masks[i][:n].sum()), i in truncated) + ex.meta[i]
            for k, v in zip(sft_format.INDEX_SCHEMA.names, vals):
                cols[k].append(v)
            at += n
    return pa.table(cols, schema=sft_format.INDEX_SCHEMA)


def _counts(ex: Examples, packing: pack.Packing, rows: list[list[int]], arrays: dict, seq_len: int) -> dict:
    n_tokens = int((arrays["segment_ids"] > 0).sum())
    c = dict(ex.counts)
    c.update(records=sum(s["records"] for s in ex.sources), examples=sum(s["examples"] for s in ex.sources),
             skipped=sum(s["skipped"] for s in ex.sources), encoded=len(ex.ids),
             packed=sum(len(r) for r in rows), dropped_overlong=len(packing.dropped_overlong),
             truncated=len(packing.truncated), dropped_truncated_no_target=len(packing.dropped_no_target),
             rows=len(rows), tokens=n_tokens, loss_tokens=int(arrays["loss_mask"].sum()),
             padding_tokens=len(rows) * seq_len - n_tokens)
    return c


def _manifest(ex: Examples, packing: pack.Packing, rows: list[list[int]], arrays: dict,
              index: decontam.EvalIndex | None, opts: Options) -> dict:
    """Every manifest field but the layout (which :func:`xgen_data.sft.sft_format.write_shards` adds)."""
    counts = _counts(ex, packing, rows, arrays, opts.seq_len)
    return {
        "seq_len": opts.seq_len, "eos_id": EOS_ID, "vocab_size": VOCAB_SIZE, "padded_vocab_size": PADDED_VOCAB_SIZE,
        "seed": opts.seed, "overlong": opts.overlong, "on_error": opts.on_error,
        "oasst_paths": "all" if opts.oasst_all_paths else "best",
        "rendering": render.rendering_info(opts.system_header),
        "sources": ex.sources, "shapes": dict(sum((Counter(s["shapes"]) for s in ex.sources), Counter())),
        "counts": counts, "padding_share": counts["padding_tokens"] / (len(rows) * opts.seq_len) if rows else 0.0,
        "decontamination": {"eval_sets": index.sets if index else [],
                            "removed_per_benchmark": dict(sorted(Counter(r["benchmark"] for r in ex.removed).items())),
                            "removed": ex.removed},
    }


def prepare(paths: list[str], out_dir: str, opts: Options) -> dict:
    """Build an SFT shards folder from instruction-data files (see the module docstring).

    Args:
        paths: JSONL (``.jsonl``, ``.jsonl.gz``, ``.jsonl.zst``) or Parquet files of instruction records.
        out_dir: the folder to (re)write; a non-empty folder must be an earlier SFT shards folder.
    Returns:
        the written manifest (:mod:`xgen_data.sft.sft_format`).
    Raises:
        InputError: a bad record (file:line), input file or evaluation set; an option out of range.
        RefusedError: ``out_dir`` holds files that are not SFT shards, or another writer holds it.
    """
    if opts.seq_len < 2 or opts.seq_len > 1 << 20:
        raise InputError(f"--seq-len {opts.seq_len}: must be between 2 and {1 << 20}")
    if opts.validation_rows < 0:
        raise InputError(f"--validation-rows {opts.validation_rows}: must be >= 0")
    if not paths:
        raise InputError("no input files")
    publish.make_parent(out_dir)
    with sft_format.publisher(out_dir, inputs=paths) as pub:
        pub.check_foreign()
        index = decontam.load_eval_sets(opts.decontaminate) if opts.decontaminate else None
        ex = read_inputs(paths, opts, index)
        lengths = np.fromiter(map(len, ex.ids), dtype=np.int64, count=len(ex.ids))
        packing = pack.fit_lengths(lengths, ex.masks, opts.seq_len, opts.overlong)
        rows = pack.best_fit_decreasing(packing.lengths, opts.seq_len, opts.seed)
        if not rows:
            c = ex.counts
            raise InputError(f"no example to pack ({sum(s['records'] for s in ex.sources):,} records read, "
                             f"{sum(s['skipped'] for s in ex.sources):,} skipped, {c['removed_decontaminated']:,} "
                             f"removed by decontamination, {len(packing.dropped_overlong):,} longer than --seq-len "
                             f"{opts.seq_len}); nothing was written")
        if opts.validation_rows >= max(len(rows), 1):
            raise InputError(f"--validation-rows {opts.validation_rows}: the examples fill only {len(rows)} rows "
                             "(at least one must stay for training)")
        arrays = pack.fill_rows(rows, ex.ids, ex.masks, packing.lengths, opts.seq_len)
        manifest = _manifest(ex, packing, rows, arrays, index, opts)
        removed = pa.Table.from_pylist(ex.removed, schema=sft_format.REMOVED_SCHEMA)
        written = sft_format.write_shards(pub.begin(), arrays, _index_table(ex, rows, packing), removed, manifest,
                                          opts.validation_rows, opts.rows_per_shard)
        pub.commit()
    return written


def summary_rows(manifest: dict) -> list[tuple[str, object]]:
    """(what, value) lines for the CLI table of a prepare result."""
    c = manifest["counts"]
    rows = [(k, c.get(k, 0)) for k in ("records", "examples", "skipped", "truncated_stream", "removed_decontaminated",
                                       "dropped_overlong", "truncated", "dropped_truncated_no_target", "packed",
                                       "rows", "tokens", "loss_tokens")]
    rows.append(("padding_share", round(manifest["padding_share"], 4)))
    rows += [(f"shape {k}", v) for k, v in sorted(manifest["shapes"].items())]
    rows += [(f"removed by {k}", v) for k, v in manifest["decontamination"]["removed_per_benchmark"].items()]
    return rows


def print_errors(manifest: dict, file=sys.stderr) -> None:
    """The kept messages of skipped records, one per line."""
    for src in manifest["sources"]:
        for msg in src["errors"]:
            print(f"skipped: {msg}", file=file)
