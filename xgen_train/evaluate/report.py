"""Evaluation reports in the shape of the XGen-7B report's Tables 4-7 (and 13), from ``xgen eval`` output folders.

:func:`collect` reads each folder's outputs through its checksum manifest (:mod:`xgen_train.evaluate.outputs`):

* ``xgen eval tasks`` folders (``results.json``, lm-eval's own): MMLU with 5 shots -> Table 4, with 0 shots ->
  Table 5 (the four categories and the micro-averaged ``mmlu`` group); arc_challenge, hellaswag, winogrande,
  boolq, piqa, openbookqa with 0 shots -> Table 6 (acc and acc_norm);
* ``xgen eval humaneval`` folders (``pass_at_k.json``) -> Table 7 (pass@1, and pass@10 / pass@100 when n allows);
* ``xgen eval rouge`` folders (``rouge.json``) -> Table 13 (ROUGE-1/2/L/Lsum F1).

Values are percentages (x 100). :data:`XGEN_7B` holds the report's XGen-7B figures (Nijkamp et al. 2023,
"XGen-7B Technical Report", arXiv:2309.03450, Tables 4-7) shown beside ours as a labelled reference column;
other rows have none. The report does not say whether Table 6 is acc or acc_norm: its figure is shown on the
acc row. Table 13's figures depend on the data set and are not carried. Each row of an ``eval tasks`` folder
names the split lm-eval scored (``split``: the task's test split when it has one, else validation, from
``results.json``'s ``configs``); the report scored ARC-challenge on test, so a validation-split ARC value is
flagged as not comparable. A folder written with ``--limit N`` (a smoke run over the first N documents or problems,
lm-eval's "only for testing" option) gives rows with ``limit`` N, flagged in the Markdown as not comparable with
the published figures.
"""
from __future__ import annotations

import json
import os

from xgen_data.errors import InputError
from xgen_train.evaluate.harness import LIMIT_NOTE
from xgen_train.evaluate.outputs import read_manifest, read_verified

__all__ = ["XGEN_7B", "collect", "to_markdown"]

#: (table, benchmark) -> the report's XGen-7B value (percent). Reference only: never used in a computation.
#: Source, every table: Nijkamp et al. 2023, arXiv:2309.03450, https://arxiv.org/abs/2309.03450 -- Table 4 (MMLU
#: 5-shot), Table 5 (MMLU 0-shot), Table 6 (zero-shot), Table 7 (HumanEval). These figures were entered with
#: the report command and have not been re-checked against a copy of the paper: no copy of its tables was
#: reachable from this project (searched: the stored arxiv.org/abs/2309.03450 mirrors, the Salesforce blog post
#: blog.salesforceairesearch.com/xgen/, the xgen-7b-8k-base model card, public code quoting the paper).
#: The MMLU category cells (humanities, STEM, social sciences, other) of Tables 4 and 5 stay blank for the same
#: reason (:data:`UNSOURCED`): never filled from memory or by guess.
XGEN_7B = {
    ("Table 4: MMLU 5-shot", "mmlu (weighted average)"): 36.3,
    ("Table 5: MMLU 0-shot", "mmlu (weighted average)"): 32.1,
    ("Table 6: zero-shot", "arc_challenge"): 41.2,
    ("Table 6: zero-shot", "hellaswag"): 74.2,
    ("Table 6: zero-shot", "winogrande"): 64.9,
    ("Table 6: zero-shot", "truthfulqa"): 39.1,
    ("Table 6: zero-shot", "boolq"): 74.3,
    ("Table 6: zero-shot", "piqa"): 75.5,
    ("Table 6: zero-shot", "openbookqa"): 40.2,
    ("Table 7: HumanEval", "pass@1"): 14.20,
}

#: Cells the report has but no checked source gave us: shown blank, with a note in the Markdown.
UNSOURCED = {(t, c) for t in ("Table 4: MMLU 5-shot", "Table 5: MMLU 0-shot")
             for c in ("humanities", "stem", "social sciences", "other")}

#: The split the report scored, where it differs from what the local data may give.
REPORT_SPLIT = {"arc_challenge": "test"}

MMLU_ROWS = {"mmlu_humanities": "humanities", "mmlu_stem": "stem", "mmlu_social_sciences": "social sciences",
             "mmlu_other": "other", "mmlu": "mmlu (weighted average)"}
ZERO_SHOT = ("arc_challenge", "hellaswag", "winogrande", "boolq", "piqa", "openbookqa")


def _row(table: str, bench: str, metric: str, value: float, source: str, n: int | None = None,
         reference: bool = True, split: str | None = None, limit: int | None = None) -> dict:
    ref = XGEN_7B.get((table, bench)) if reference else None
    return {"table": table, "benchmark": bench, "metric": metric, "value": round(100.0 * value, 2), "n": n,
            "split": split, "limit": limit, "xgen_7b_report": ref, "source": source}


def _tasks_limit(res: dict) -> int | None:
    """The documents-per-task limit of an ``eval tasks`` result: xgen's ``limit``, else lm-eval's own
    ``config.limit`` (recorded by ``simple_evaluate`` in every results document)."""
    if "limit" in res:
        return res["limit"]
    return (res.get("config") or {}).get("limit")


def _split_of(configs: dict, subtasks: dict, name: str) -> str | None:
    """The split lm-eval scored ``name`` on (its ``test_split`` when set, else ``validation_split``, as
    ``ConfigurableTask.eval_docs`` picks); for a group, its tasks' common split; None when not recorded."""
    if name in configs:
        return configs[name].get("test_split") or configs[name].get("validation_split")
    parts = {_split_of(configs, subtasks, s) for s in subtasks.get(name, [])}
    return parts.pop() if len(parts) == 1 else None


def _tasks_rows(folder: str) -> list[dict]:
    res = json.loads(read_verified(folder, "results.json"))
    values = {**res.get("groups", {}), **res.get("results", {})}
    shots = res.get("n-shot", {})
    counts = res.get("n-samples", {})
    rows = []

    def shot_of(name: str) -> int | None:
        if name in shots:
            return int(shots[name])
        sub = [int(v) for k, v in shots.items() if k.startswith(name + "_") or k.startswith("mmlu_")]
        return sub[0] if sub and len(set(sub)) == 1 else None

    subtasks = res.get("group_subtasks", {})
    configs = res.get("configs", {})
    limit = _tasks_limit(res)

    def n_of(name: str) -> int | None:  # a group's documents: the sum over its tasks (lm-eval's group_subtasks)
        if name in counts:
            return counts[name].get("effective")
        parts = [n_of(s) for s in subtasks.get(name, [])]
        return sum(parts) if parts and None not in parts else None

    for name, label in MMLU_ROWS.items():
        if name in values and "acc,none" in values[name]:
            k = shot_of(name)
            table = {5: "Table 4: MMLU 5-shot", 0: "Table 5: MMLU 0-shot"}.get(k, f"MMLU {k}-shot")
            rows.append(_row(table, label, "acc", values[name]["acc,none"], folder, n_of(name),
                             split=_split_of(configs, subtasks, name), limit=limit))
    for name in ZERO_SHOT:
        if name in values:
            k = shot_of(name)
            table = "Table 6: zero-shot" if k == 0 else f"{k}-shot"
            n = counts.get(name, {}).get("effective")
            for metric in ("acc", "acc_norm"):
                if f"{metric},none" in values[name]:
                    rows.append(_row(table, name, metric, values[name][f"{metric},none"], folder, n,
                                     reference=metric == "acc", split=_split_of(configs, subtasks, name),
                                     limit=limit))
    return rows


def collect(folders: list[str]) -> list[dict]:
    """Report rows from ``xgen eval tasks`` / ``humaneval`` / ``rouge`` output folders, in table order.

    Each row: ``table``, ``benchmark``, ``metric``, ``value`` (percent), ``n`` (documents or samples, when
    known), ``split`` (the data split lm-eval scored, for ``eval tasks`` rows; else None), ``limit`` (the
    ``--limit`` documents per task or problems of a smoke run, not comparable with published figures; None for
    a full run), ``xgen_7b_report`` (the report's figure or None), ``source`` (the folder).

    Raises:
        InputError: a folder is not an xgen eval output (no manifest) or of an unknown kind.
        DamagedDataError: a file differs from its manifest checksum.
    """
    rows: list[dict] = []
    for folder in folders:
        kind = read_manifest(folder).get("kind")
        if kind == "eval-tasks":
            rows += _tasks_rows(folder)
        elif kind == "eval-humaneval":
            doc = json.loads(read_verified(folder, "pass_at_k.json"))
            for k in ("pass@1", "pass@10", "pass@100"):
                if k in doc:
                    rows.append(_row("Table 7: HumanEval", k, k, doc[k], folder, doc.get("samples"),
                                     limit=(doc.get("settings") or {}).get("limit")))
        elif kind == "eval-rouge":
            doc = json.loads(read_verified(folder, "rouge.json"))
            for t, v in doc["mean_x100"].items():
                rows.append({**_row("Table 13: ROUGE", t, "f1", v["f1"] / 100.0, folder, doc.get("examples")),
                             "xgen_7b_report": None})
        else:
            raise InputError(f"{folder}: an xgen eval output of kind {kind!r}, which the report does not read")
    rows.sort(key=lambda r: r["table"])
    return rows


def to_markdown(rows: list[dict]) -> str:
    """One Markdown table per report table: benchmark, metric, ours, n, the report's XGen-7B (reference)."""
    out = ["# Evaluation report", "",
           "Values in percent. The last column is the XGen-7B technical report's figure (arXiv:2309.03450), a "
           "published reference, not a result of this run. TruthfulQA has no offline data and is not evaluated.",
           ""]
    limited = sorted({(r["source"], r["limit"]) for r in rows if r.get("limit") is not None})
    if limited:
        out += [f"**Smoke run**: rows with a limit ({LIMIT_NOTE}): "
                + ", ".join(f"{src} (limit {n})" for src, n in limited) + ".", ""]
    notes = []
    for table in dict.fromkeys(r["table"] for r in rows):
        out += [f"## {table}", "",
                "| benchmark | metric | this model | n | split | limit | XGen-7B (report, reference) |",
                "|---|---|---:|---:|---|---:|---:|"]
        for r in (r for r in rows if r["table"] == table):
            ref = "" if r["xgen_7b_report"] is None else f"{r['xgen_7b_report']:.2f}"
            lim = "" if r.get("limit") is None else f"{r['limit']} (not comparable)"
            out.append(f"| {r['benchmark']} | {r['metric']} | {r['value']:.2f} | {r['n'] or ''} | "
                       f"{r.get('split') or ''} | {lim} | {ref} |")
            if (table, r["benchmark"]) in UNSOURCED:
                notes.append(f"{table}, {r['benchmark']}: the report's cell is left blank (no checked source).")
            want = REPORT_SPLIT.get(r["benchmark"])
            if want and r.get("split") and r["split"] != want and r["metric"] == "acc":
                notes.append(f"{r['benchmark']}: scored on the {r['split']} split; the report's figure is on "
                             f"{want}, so the two are not directly comparable.")
        out.append("")
    if notes:
        out += ["Notes:", ""] + [f"- {n}" for n in notes] + [""]
    out.append("Sources: " + ", ".join(sorted({os.path.basename(os.path.normpath(r['source'])) for r in rows})))
    return "\n".join(out) + "\n"
