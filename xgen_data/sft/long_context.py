"""Long-context instruction examples from long corpus documents (SPEC §5: the report's ~1,500 examples per
SCROLLS task, each at least 4,000 tokens).

Each chosen document becomes one example with one of three task templates whose answer comes from the document
itself (a raw corpus has no reference summaries or questions):

* ``summarise``: the document without its first paragraph; the response is that first paragraph (Choice: the
  author's own opening stands in for a reference summary, as the lead baseline of summarisation does).
* ``question``: the whole document and a question about it: which line comes right after a quoted line
  (chosen with the seed among lines that occur once); the response is that next line.
* ``continue``: the document without its end; the response is the end (its last lines, up to
  :data:`CONTINUE_CHARS` characters).

A document qualifies when its rendered example (SPEC §5, :mod:`xgen_data.sft.render`) has at least
``min_tokens`` tokens. Per source (the corpus record's ``source``) at most ``per_source`` documents are taken,
in a seeded order; a document gives at most one example; the task of each is drawn with the seed. Output is
``{id, prompt, response, source, task, doc_id}`` JSONL that ``xgen sft prepare`` reads (shape
``prompt_response``).

The output folder is published whole (:class:`xgen_data.store.publish.FolderPublisher`, commit points
``long_context.*``): written into a temporary sibling and swapped in, one writer at a time; ``report.json`` is
its manifest (it names the JSONL and its sha256), so only an earlier long-context folder is replaced and a
folder holding anything else, or inside (or containing) the corpus, is refused.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import Counter, defaultdict

import numpy as np
import pyarrow.parquet as pq

from xgen_data.errors import InputError
from xgen_data.sft import masking, render, shapes
from xgen_data.store import fsutil, publish
from xgen_data.store.corpus import Corpus

TASKS = ("summarise", "question", "continue")
CONTINUE_CHARS = 2000
OUTPUT = "long_context.jsonl"
REPORT = "report.json"


def _summarise(text: str, rng: np.random.Generator) -> tuple[str, str] | None:
    head, sep, rest = text.strip().partition("\n\n")
    if not sep or not head.strip() or not rest.strip():
        return None
    return f"Summarise the following document in one paragraph.\n\n{rest.strip()}", head.strip()


def _question(text: str, rng: np.random.Generator) -> tuple[str, str] | None:
    lines = [ln.strip() for ln in text.splitlines()]
    counts = Counter(lines)
    ok = [i for i in range(len(lines) - 1) if len(lines[i]) >= 20 and counts[lines[i]] == 1 and lines[i + 1]]
    if not ok:
        return None
    i = ok[int(rng.integers(len(ok)))]
    return (f"Read the document and answer the question.\n\n{text.strip()}\n\nQuestion: which line comes right "
            f"after the line \"{lines[i]}\" in the document?", lines[i + 1])


def _continue(text: str, rng: np.random.Generator) -> tuple[str, str] | None:
    lines = text.strip().splitlines()
    k = len(lines)
    while k > 1 and len("\n".join(lines[k - 1:])) < CONTINUE_CHARS // 2:
        k -= 1
    head, tail = "\n".join(lines[:k]).strip(), "\n".join(lines[k:]).strip()
    if not head or not tail or len(tail) > CONTINUE_CHARS * 2:
        return None
    return f"Continue the following text.\n\n{head}", tail


_MAKERS = {"summarise": _summarise, "question": _question, "continue": _continue}


def example_tokens(prompt: str, response: str) -> int:
    """Tokens of the rendered example (SPEC §5 format, EOS included)."""
    conv = shapes.Conversation(((prompt, response),))
    return len(masking.encode_pieces(render.pieces(conv))[0])


def _candidates(corpus_dir: str, subsets: list[str] | None, min_doc_tokens: int) -> dict[str, list[tuple]]:
    """Per source, (doc key, subset, doc id, text) of documents with at least ``min_doc_tokens`` tokens."""
    corpus = Corpus(corpus_dir)
    known = corpus.subsets()
    for s in subsets or []:
        if s not in known:
            raise InputError(f"{corpus_dir}: no subset {s!r}; subsets: {', '.join(known) or '(none)'}")
    parts = [p for p in corpus.parts() if not subsets or p.subset in subsets]
    corpus.verify_parts(parts)
    by_source: dict[str, list[tuple]] = defaultdict(list)
    for part in parts:
        table = pq.read_table(part.path, columns=["id", "text", "source", "n_tokens"])
        keep = np.flatnonzero(table.column("n_tokens").to_numpy() >= min_doc_tokens)
        cols = table.take(keep).to_pydict()
        for doc_id, text, source in zip(cols["id"], cols["text"], cols["source"]):
            by_source[source or ""].append((f"{part.subset}/{doc_id}", part.subset, doc_id, text))
    return by_source


def _seeded_order(items: list[tuple], seed: int, source: str) -> list[tuple]:
    key = lambda it: hashlib.sha256(f"{seed}:{source}:{it[0]}".encode()).digest()  # noqa: E731
    return sorted(items, key=key)


def _listed_files(folder: str) -> set[str] | None:
    """The files a long-context folder's ``report.json`` names; None: not a long-context folder."""
    try:
        report = fsutil.read_json(os.path.join(folder, REPORT))
        if report.get("output") != OUTPUT or not isinstance(report.get("sha256"), str):
            return None
    except (OSError, ValueError, AttributeError):
        return None
    return {REPORT, OUTPUT}


def _is_complete(folder: str) -> bool:
    """Whether ``folder`` holds a long-context JSONL matching its report's sha256 (a backup worth restoring)."""
    if _listed_files(folder) is None:
        return False
    try:
        report = fsutil.read_json(os.path.join(folder, REPORT))
        return fsutil.sha256_file(os.path.join(folder, OUTPUT)) == report["sha256"]
    except (OSError, ValueError):
        return False


def publisher(out_dir: str, corpus_dir: str) -> publish.FolderPublisher:
    """The :class:`~xgen_data.store.publish.FolderPublisher` of a long-context output folder."""
    return publish.FolderPublisher(out_dir, listed_files=_listed_files, is_complete=_is_complete,
                                   what="long-context folder", crash_prefix="long_context", inputs=[corpus_dir])


def make_examples(corpus_dir: str, out_dir: str, min_tokens: int = 4000, per_source: int = 1500, seed: int = 0,
                  tasks: tuple[str, ...] = TASKS, subsets: list[str] | None = None, max_tokens: int = 8192) -> dict:
    """Write ``<out_dir>/long_context.jsonl`` and ``<out_dir>/report.json`` (counts per source and task).

    The order of documents within a source is ``sha256(seed:source:doc)``, so it does not depend on part
    layout; each document is tried with one seeded task, and kept when its rendered example has at least
    ``min_tokens`` and at most ``max_tokens`` tokens (the SFT row length, so none is dropped as overlong).

    Returns:
        the report: ``examples``, ``per_source``, ``per_task``, ``documents_considered``, ``too_short``,
        ``too_long``, ``no_task`` (the template found nothing to ask), ``sha256`` of the JSONL, the settings.
    Raises:
        InputError: not a corpus, an unknown subset or task, bad numbers.
        RefusedError: ``out_dir`` holds files that are not an earlier long-context output, is inside or holds
            the corpus, or another writer holds it (nothing is written).
    """
    if min_tokens < 1 or per_source < 1 or max_tokens < min_tokens:
        raise InputError(f"--min-tokens and --per-source must be positive and --max-tokens at least --min-tokens, "
                         f"got {min_tokens}, {per_source}, {max_tokens}")
    bad = [t for t in tasks if t not in _MAKERS]
    if bad or not tasks:
        raise InputError(f"unknown task(s) {bad or tasks}; known: {', '.join(TASKS)}")
    publish.make_parent(out_dir)
    with publisher(out_dir, corpus_dir) as pub:
        pub.check_foreign()
        by_source = _candidates(corpus_dir, subsets, min_doc_tokens=min_tokens // 2)
        rows, counts, per_source_n, per_task = _examples(by_source, min_tokens, max_tokens, per_source, seed, tasks)
        report = _write(pub.begin(), rows, counts, per_source_n, per_task, corpus_dir,
                        {"max_tokens": max_tokens, "min_tokens": min_tokens, "per_source_cap": per_source,
                         "seed": seed, "tasks": list(tasks)})
        pub.commit()
    return report


def _examples(by_source: dict[str, list[tuple]], min_tokens: int, max_tokens: int, per_source: int, seed: int,
              tasks: tuple[str, ...]) -> tuple[list[dict], Counter, Counter, Counter]:
    """The kept example rows, the counts of documents considered and skipped, per source and per task."""
    rows, counts = [], Counter()
    per_source_n, per_task = Counter(), Counter()
    for source in sorted(by_source):
        for key, subset, doc_id, text in _seeded_order(by_source[source], seed, source):
            if per_source_n[source] >= per_source:
                break
            counts["documents_considered"] += 1
            rng = np.random.default_rng([seed, int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")])
            task = tasks[int(rng.integers(len(tasks)))]
            made = _MAKERS[task](text, rng)
            if made is None:
                counts["no_task"] += 1
                continue
            n = example_tokens(*made)
            if not min_tokens <= n <= max_tokens:
                counts["too_short" if n < min_tokens else "too_long"] += 1
                continue
            rows.append({"id": f"long:{key}:{task}", "prompt": made[0], "response": made[1], "source": source,
                         "task": task, "doc_id": doc_id, "subset": subset})
            per_source_n[source] += 1
            per_task[task] += 1
    return rows, counts, per_source_n, per_task


def _write(folder: str, rows: list[dict], counts: Counter, per_source_n: Counter, per_task: Counter,
           corpus_dir: str, settings: dict) -> dict:
    """Write the JSONL, then ``report.json`` naming it and its sha256, into ``folder``; returns the report."""
    path = os.path.join(folder, OUTPUT)
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    report = {"examples": len(rows), "per_source": dict(per_source_n), "per_task": dict(per_task),
              "documents_considered": counts["documents_considered"], "too_short": counts["too_short"],
              "too_long": counts["too_long"], "max_tokens": settings["max_tokens"], "no_task": counts["no_task"],
              "min_tokens": settings["min_tokens"], "per_source_cap": settings["per_source_cap"],
              "seed": settings["seed"], "tasks": settings["tasks"], "corpus": os.path.abspath(corpus_dir),
              "output": OUTPUT, "sha256": fsutil.sha256_file(path)}
    fsutil.write_json(os.path.join(folder, REPORT), report)
    return report
