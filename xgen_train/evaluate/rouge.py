"""ROUGE for summaries (SPEC §6, the report's Table 13): Google's ``rouge-score`` with ``use_stemmer=True``.

Scores are rouge1, rouge2, rougeL and rougeLsum (``rougeLsum`` splits summaries into sentences at newlines,
as rouge-score does), each example scored with the reference as the target (``scorer.score(reference,
prediction)``); the reported value is the mean over examples of the F1 (and of precision and recall) x 100.
No bootstrap resampling, so the numbers depend on nothing random.

Input files (:func:`read_texts`): JSONL, one example per line, either a JSON string or an object holding the
text under ``field`` (default ``"text"``); or, for a ``.txt`` file, one example per line (newlines inside a
summary cannot be written that way: use JSONL for rougeLsum).
"""
from __future__ import annotations

from xgen_data.errors import InputError
from xgen_train.evaluate.inputs import InputList, json_lines, read_input, text_lines
from xgen_train.evaluate.outputs import require_extra

__all__ = ["ROUGE_TYPES", "read_texts", "rouge_scores"]

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def read_texts(path: str, field: str = "text") -> InputList:
    """The examples of ``path`` in order (see the module doc for the formats), parsed from the bytes that are
    hashed: ``.input`` of the result is ``{"path", "sha256"}`` of the file read (:mod:`xgen_train.evaluate.inputs`).

    Raises:
        InputError: naming ``file:line`` for a line that is not UTF-8, invalid JSON or a line without a string
            ``field``; a path that is not a regular file.
    """
    data, source = read_input(path)
    out = InputList()
    out.input = source
    if path.lower().endswith(".txt"):
        out.extend(line for _, line in text_lines(data, path))
        return out
    for lineno, rec in json_lines(data, path):
        if isinstance(rec, dict):
            rec = rec.get(field)
        if not isinstance(rec, str):
            raise InputError(f"{path}:{lineno}: expected a JSON string or an object with a string {field!r}")
        out.append(rec)
    return out


def rouge_scores(predictions: list[str], references: list[str]) -> tuple[dict[str, dict[str, float]], list[dict]]:
    """Mean ROUGE x 100 over examples: ``({type: {"f1", "precision", "recall"}}, per-example rows)``; each row
    is ``{type: {"f1", "precision", "recall"}}`` (fractions, as rouge-score returns them).

    Raises:
        InputError: different numbers of predictions and references, or none.
    """
    rouge_scorer = require_extra("rouge_score.rouge_scorer")
    if len(predictions) != len(references):
        raise InputError(f"{len(predictions)} predictions but {len(references)} references; they pair up line by line")
    if not predictions:
        raise InputError("no examples to score")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    rows = []
    for pred, ref in zip(predictions, references):
        s = scorer.score(ref, pred)  # target (reference) first
        rows.append({t: {"f1": s[t].fmeasure, "precision": s[t].precision, "recall": s[t].recall}
                     for t in ROUGE_TYPES})
    mean = {t: {m: 100.0 * sum(r[t][m] for r in rows) / len(rows) for m in ("f1", "precision", "recall")}
            for t in ROUGE_TYPES}
    return mean, rows
