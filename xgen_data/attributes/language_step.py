"""The ``language`` attribute step: per document, the source's language, the one the table detects, and which
the corpus uses (:mod:`xgen_data.attributes.languages` holds the table and the set's key)."""
from __future__ import annotations

import time

import pyarrow as pa
import pyarrow.parquet as pq

from xgen_data.attributes.languages import LANGUAGE_STEP, identify, language_params, source_key, table
from xgen_data.attributes.part_step import PartAttributeStep, run_part_step
from xgen_data.execute.contract import ItemResult, StepReport
from xgen_data.store import fsutil


def compute_language_attributes(corpus, verify: bool = True, executor=None) -> StepReport | None:
    """Write and commit the ``language`` attributes of every part (one new generation), unless current.

    Per document (``attributes/language/<hash>/<gen>/<subset>/<part>.parquet``): ``id``,
    ``language_source`` (the source's language as a table key, :func:`source_key`; null: none given),
    ``language_detected`` and ``language_how`` (:func:`identify` on ``path`` and the text's first line), and
    ``language`` = the source's when given (kept), else the detected one (null: unknown, never guessed),
    ``language_is_code`` (``language`` is a programming language of the table) and ``language_disagrees``
    (the source names a language of the table and the table says another one; a natural language such as
    ``en`` never disagrees).
    Call under the corpus lock. Returns the step's :class:`StepReport`, or None when the set was already
    current. ``executor`` runs the per-part items (:func:`language_part`; default this process).

    Raises:
        DamagedPartError: a part is damaged (``verify``); ItemError: a part could not be read.
    """
    key = language_params()
    if corpus.attribute_current(LANGUAGE_STEP, key):
        return None
    return run_part_step(PartAttributeStep(LANGUAGE_STEP, language_part, corpus, key, (), verify), executor)


def language_part(part_path: str, out_path: str, crash_point: str | None) -> ItemResult:
    """The ``language`` attributes of one docs part (a work item of :func:`compute_language_attributes`),
    written atomically to ``out_path``, one row per document in the part's order."""
    t0 = time.time()
    t = pq.read_table(part_path, columns=["id", "path", "language", "text"])
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
    with fsutil.atomic_path(out_path) as tmp:
        pq.write_table(out, tmp, compression="zstd")
    if crash_point:
        fsutil.crash_point(crash_point)
    return ItemResult(out_path, documents=t.num_rows, bytes=t.nbytes, seconds=time.time() - t0)
