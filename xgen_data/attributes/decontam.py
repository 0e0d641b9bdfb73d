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

import pyarrow as pa
import pyarrow.parquet as pq

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


def compute_decontam_attributes(corpus, eval_sets: list[str] | tuple[str, ...], verify: bool = True) -> bool:
    """Write and commit the ``decontam`` attributes of every part (one new generation), unless current.

    Call under the corpus lock. Returns False when the set was already current.

    Raises:
        InputError: an evaluation file is missing or has a bad line (file:line).
        DamagedPartError: a part is damaged (``verify``).
    """
    key = decontam_params(eval_sets)
    if corpus.attribute_current(DECONTAM_STEP, key):
        return False
    index = decontam.load_eval_sets(list(eval_sets))
    parts, fingerprint, gen = corpus.start_attributes(DECONTAM_STEP, key, verify)
    for i, part in enumerate(parts):
        t = pq.read_table(part.path, columns=["id", "text"])
        out = part_table(t.column("id").to_pylist(), t.column("text").to_pylist(), index)
        with fsutil.atomic_path(corpus.attribute_path(gen, part)) as tmp:
            pq.write_table(out, tmp, compression="zstd")
        if i == 0:
            fsutil.crash_point("decontam.part_written")
    corpus.commit_attributes(DECONTAM_STEP, key, gen, fingerprint)
    return True
