"""The ``decontam`` attribute step: which pre-training documents overlap an evaluation set (SPEC §5).

Computed once per evaluation-set fingerprint (:func:`xgen_data.sft.decontam.fingerprint`: the files' names and
contents and the method's constants), like the ``license`` and ``language`` steps: one file per corpus part,
``attributes/decontam/<params-hash>/<gen>/<subset>/<part>.parquet``, row-aligned with the part
(:data:`SCHEMA`). Whether a recipe drops those documents is its decision (``[decontaminate] eval_sets``,
:mod:`xgen_data.mixing.decisions`: drop reason ``eval_overlap``), so recipes with and without decontamination
share the corpus. The match (benchmark, eval item id, kind, the 13-gram or code substring) is kept for
``xgen sql`` (columns ``decontam_*`` of the ``documents`` view).
"""
from __future__ import annotations

import functools
import time

import pyarrow as pa
import pyarrow.parquet as pq

from xgen_data.attributes.part_step import PartAttributeStep, run_part_step
from xgen_data.errors import InputError
from xgen_data.execute.contract import ItemResult, StepReport
from xgen_data.sft import decontam
from xgen_data.store import fsutil

DECONTAM_STEP = "decontam"
SCHEMA_VERSION = 1
SCHEMA = pa.schema([
    ("id", pa.string()),
    ("contaminated", pa.bool_()),
    ("decontam_benchmark", pa.string()),  # NULL when clean
    ("decontam_item_id", pa.string()),
    ("decontam_kind", pa.string()),  # "ngram13" or "code_substring"
    ("decontam_match", pa.string()),
])


def decontam_params(eval_sets: list[str] | tuple[str, ...]) -> dict:
    """Attribute parameters of the ``decontam`` step for these evaluation files (their fingerprint only, so the
    same contents under another folder reuse the set).

    Raises:
        InputError: an evaluation file is missing.
    """
    return {"eval_sets": decontam.fingerprint(list(eval_sets)), "schema": SCHEMA_VERSION}


def part_table(ids: list[str], texts: list[str | None], index: decontam.EvalIndex) -> pa.Table:
    """The decontam attributes of one part's documents (:data:`SCHEMA`, same row order)."""
    cols = {k: [] for k in SCHEMA.names}
    for doc_id, text in zip(ids, texts):
        hit = decontam.find(text or "", index)
        vals = (doc_id, hit is not None) + ((hit.benchmark, hit.eval_item_id, hit.kind, hit.match) if hit
                                            else (None, None, None, None))
        for k, v in zip(SCHEMA.names, vals):
            cols[k].append(v)
    return pa.table(cols, schema=SCHEMA)


def compute_decontam_attributes(corpus, eval_sets: list[str] | tuple[str, ...], verify: bool = True,
                                executor=None) -> StepReport | None:
    """Write and commit the ``decontam`` attributes of every part (one new generation), unless current.

    The evaluation files are read here first (so a bad line fails before any part is read); each work item
    (:func:`decontam_part`, one per part) reads them again in its own process and checks they still hash to
    the set's fingerprint. Call under the corpus lock. ``executor`` runs the items (default this process).
    Returns the step's :class:`StepReport`, or None when the set was already current.

    Raises:
        InputError: an evaluation file is missing or has a bad line (file:line).
        DamagedPartError: a part is damaged (``verify``); ItemError: a part could not be read, or an
            evaluation file changed while the step ran.
    """
    key = decontam_params(eval_sets)
    if corpus.attribute_current(DECONTAM_STEP, key):
        return None
    _eval_index(tuple(eval_sets), key["eval_sets"])
    step = PartAttributeStep(DECONTAM_STEP, decontam_part, corpus, key, (tuple(eval_sets), key["eval_sets"]), verify)
    return run_part_step(step, executor)


def decontam_part(part_path: str, out_path: str, crash_point: str | None, eval_sets: tuple[str, ...],
                  fingerprint: str) -> ItemResult:
    """The ``decontam`` attributes of one docs part (a work item of :func:`compute_decontam_attributes`),
    written atomically to ``out_path``, one row per document in the part's order (:data:`SCHEMA`).

    Raises:
        InputError: the evaluation files no longer hash to ``fingerprint``.
    """
    t0 = time.time()
    index = _eval_index(tuple(eval_sets), fingerprint)
    t = pq.read_table(part_path, columns=["id", "text"])
    out = part_table(t.column("id").to_pylist(), t.column("text").to_pylist(), index)
    with fsutil.atomic_path(out_path) as tmp:
        pq.write_table(out, tmp, compression="zstd")
    if crash_point:
        fsutil.crash_point(crash_point)
    return ItemResult(out_path, documents=t.num_rows, bytes=t.nbytes, seconds=time.time() - t0)


@functools.lru_cache(maxsize=4)
def _eval_index(eval_sets: tuple[str, ...], fingerprint: str) -> decontam.EvalIndex:
    """The evaluation index, read once per worker process; it must be the set the step was keyed by."""
    index = decontam.load_eval_sets(list(eval_sets))
    if index.fingerprint() != fingerprint:
        raise InputError(f"{', '.join(eval_sets)}: the evaluation files changed while the decontam step ran")
    return index
