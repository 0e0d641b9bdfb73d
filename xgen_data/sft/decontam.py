"""Decontamination against evaluation sets (SPEC §5, the GPT-3 / LLaMA procedure, plus bigcode's for code).

Text is normalised by Unicode NFKC, lower-casing, removing punctuation and symbols (Unicode categories P* and
S*) and collapsing whitespace; words are the space-separated tokens of
that. A training example (its prompts and responses) or a pre-training document is contaminated when it
shares any word 13-gram with an evaluation item (its prompt and its reference together). Choice: an item with
fewer than 13 words but at least :data:`MIN_SHORT_WORDS` contributes its whole word sequence as one gram
(GPT-3 lowered N for short items); shorter items are not checked and are counted as ``too_short``.

Code benchmarks (HumanEval-shaped items, those with a ``canonical_solution``): also exact substrings of the
prompt's docstring and of the canonical solution after whitespace normalisation (every whitespace run becomes
one space, ends stripped; bigcode's method), when at least :data:`MIN_SUBSTRING_CHARS` long (Choice: shorter
snippets such as ``return a + b`` occur in unrelated code).

Evaluation set files are JSONL (``.jsonl``, ``.jsonl.gz``, ``.jsonl.zst``) or Parquet, one item a row,
recognised per row:

* HumanEval: ``{task_id, prompt, canonical_solution, …}`` (reference = the canonical solution; code)
* MMLU-style: ``{question, choices, answer}`` (reference = the correct choice, by index or letter), and
  HellaSwag-style ``{ctx, endings, label}``
* generic: an id (``id``, ``task_id``, ``item_id``, else the line number) and a prompt (``prompt``,
  ``question``, ``input``, ``instruction``, ``text``, ``ctx``, ``context``, ``query``, ``goal``, ``sentence``)
  with an optional reference (``reference``, ``answer``,
  ``target``, ``output``, ``response``, ``solution``, ``completion``, ``canonical_solution``).

The benchmark name is the file name without its suffix.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import sys
import unicodedata
from dataclasses import dataclass, field

import numpy as np

from xgen_data.errors import InputError
from xgen_data.sources import readers
from xgen_data.store import fsutil

N = 13
MIN_SHORT_WORDS = 8
MIN_SUBSTRING_CHARS = 32
_WS = re.compile(r"\s+")
_DOCSTRING = re.compile(r'(?:"""|\'\'\')(.*?)(?:"""|\'\'\')', re.S)
_PROMPT_KEYS = ("prompt", "question", "input", "instruction", "text", "ctx", "context", "query", "goal",
                "sentence")
_REF_KEYS = ("reference", "answer", "target", "output", "response", "solution", "completion",
             "canonical_solution")


@functools.lru_cache(maxsize=1)
def _punctuation_table() -> dict[int, None]:
    """``str.translate`` table deleting every Unicode punctuation (P*) and symbol (S*) character."""
    return {cp: None for cp in range(sys.maxunicode + 1) if unicodedata.category(chr(cp))[0] in "PS"}


def normalize(text: str) -> str:
    """NFKC, lower case, punctuation and symbols (Unicode categories P* and S*) removed, whitespace collapsed
    to single spaces, stripped."""
    if not text.isascii():  # NFKC leaves ASCII unchanged
        text = unicodedata.normalize("NFKC", text)
    return " ".join(text.lower().translate(_punctuation_table()).split())


def squash_ws(text: str) -> str:
    """Whitespace normalisation for code substrings: every whitespace run -> one space, ends stripped."""
    return _WS.sub(" ", text).strip()


@dataclass
class EvalIndex:
    """Grams and code substrings of every evaluation item, with the (benchmark, item id) they came from."""

    grams: dict[str, tuple[str, str]] = field(default_factory=dict)
    short: dict[str, tuple[str, str]] = field(default_factory=dict)  # whole short items (< 13 words)
    short_lengths: set[int] = field(default_factory=set)  # their word counts
    tables: dict[int, np.ndarray] = field(default_factory=dict)  # window length -> sorted hashes (built by find)
    substrings: dict[str, tuple[str, str]] = field(default_factory=dict)
    sets: list[dict] = field(default_factory=list)  # per file: path, sha256, benchmark, items, too_short

    def fingerprint(self) -> str:
        """:func:`fingerprint` of the files this index was read from."""
        return _fingerprint([(s["benchmark"], s["sha256"]) for s in self.sets])


def benchmark_name(path: str) -> str:
    """The benchmark an evaluation file is counted under: its name without ``.jsonl[.gz|.zst]`` / ``.parquet``."""
    return re.sub(r"\.(jsonl(\.gz|\.zst)?|parquet)$", "", os.path.basename(path))


def _fingerprint(sets: list[tuple[str, str]]) -> str:
    body = "|".join(f"{b}:{sha}" for b, sha in sorted(sets))
    return hashlib.sha256(f"decontam-v1|n={N}|short={MIN_SHORT_WORDS}|sub={MIN_SUBSTRING_CHARS}|{body}"
                          .encode()).hexdigest()


def fingerprint(paths: list[str]) -> str:
    """SHA-256 over the evaluation files' names and contents and this method's constants: what a pre-training
    attribute set is keyed by (computed once per eval-set hash).

    Raises:
        InputError: a file is missing.
    """
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise InputError(f"{missing[0]}: no such evaluation set file")
    return _fingerprint([(benchmark_name(p), fsutil.sha256_file(p)) for p in paths])


def _item(rec: dict, line: int) -> tuple[str, str, str, list[str]]:
    """(item id, prompt, reference, code snippets) of one eval record; raises ValueError naming the problem."""
    item_id = next((str(rec[k]) for k in ("task_id", "id", "item_id") if rec.get(k) is not None), str(line))
    choices = rec.get("choices", rec.get("endings"))
    question = rec.get("question", rec.get("ctx"))
    if isinstance(question, str) and isinstance(choices, list):
        answer = rec.get("answer", rec.get("label"))
        if isinstance(answer, str) and answer.isdigit():
            answer = int(answer)
        if isinstance(answer, str) and len(answer) == 1 and answer.upper() in "ABCDEFGHIJ":
            answer = "ABCDEFGHIJ".index(answer.upper())
        ref = choices[answer] if isinstance(answer, int) and 0 <= answer < len(choices) else ""
        return item_id, question, str(ref), []
    prompt = next((rec[k] for k in _PROMPT_KEYS if isinstance(rec.get(k), str)), None)
    if prompt is None:
        raise ValueError(f"no prompt field (one of {', '.join(_PROMPT_KEYS)})")
    ref = next((rec[k] for k in _REF_KEYS if isinstance(rec.get(k), str)), "")
    snippets = []
    if isinstance(rec.get("canonical_solution"), str):
        snippets = [squash_ws(d) for d in _DOCSTRING.findall(prompt)] + [squash_ws(rec["canonical_solution"])]
    return item_id, prompt, ref, [s for s in snippets if len(s) >= MIN_SUBSTRING_CHARS]


def load_eval_sets(paths: list[str]) -> EvalIndex:
    """Read evaluation JSONL files into one :class:`EvalIndex`.

    Raises:
        InputError: naming file:line, for a line that is not a JSON object or has no prompt; naming the file
            when it cannot be read, holds no item, changed while it was read (the bytes read are the ones hashed), or
            two files give the same benchmark name.
    """
    index = EvalIndex()
    for path in paths:
        bench = benchmark_name(path)
        if any(s["benchmark"] == bench for s in index.sets):
            raise InputError(f"{path}: a second evaluation set named {bench!r} (rename one file)")
        if not os.path.isfile(path):
            raise InputError(f"{path}: no such evaluation set file")
        with contextlib.closing(readers.open_input(path)) as opened:  # hashed, then read from the same open file
            sequential = readers.input_format(path) != "parquet"
            source = readers.HashingReader(opened.file) if sequential else opened.file
            items, too_short = _add_items(index, readers.iter_raw(path, fileobj=source), path, bench)
            if sequential:
                source.drain()
            try:  # what is read is what is hashed: the bytes read (JSONL) or the file's fstat (Parquet)
                opened.check_unchanged(source.hexdigest() if sequential else None)
            except InputError:
                raise InputError(f"{path}: changed while it was read; run again once nothing writes it") from None
        if not items:
            raise InputError(f"{path}: the evaluation set holds no items (an empty file decontaminates nothing; "
                             "pass the benchmark's JSONL)")
        index.sets.append({"path": path, "sha256": opened.sha256, "benchmark": bench, "items": items,
                           "too_short": too_short})
    index.tables = {n: _hash_table(index.grams if n == N else index.short, n)
                    for n in [N, *index.short_lengths]}
    return index


def _add_items(index: EvalIndex, records, path: str, bench: str) -> tuple[int, int]:
    """Add the n-grams, short items and code substrings of ``records`` (:func:`readers.iter_raw`'s) to ``index``;
    returns ``(items, too_short)``.

    Raises:
        InputError: naming file:line, for a line that is not a JSON object or has no prompt.
    """
    items = too_short = 0
    for raw in records:
        try:
            rec = raw.payload if isinstance(raw.payload, dict) else json.loads(raw.payload)
            if not isinstance(rec, dict):
                raise ValueError("not a JSON object")
            item_id, prompt, ref, snippets = _item(rec, raw.line)
        except ValueError as exc:
            raise InputError(f"{path}:{raw.line}: bad evaluation item: {exc}") from None
        items += 1
        words = normalize(f"{prompt} {ref}").split()
        key = (bench, item_id)
        if len(words) >= N:
            for i in range(len(words) - N + 1):
                index.grams.setdefault(" ".join(words[i:i + N]), key)
        elif len(words) >= MIN_SHORT_WORDS:
            index.short.setdefault(" ".join(words), key)
            index.short_lengths.add(len(words))
        else:
            too_short += 1
        for s in snippets:
            index.substrings.setdefault(s, key)
    return items, too_short


@dataclass(frozen=True)
class Match:
    benchmark: str
    eval_item_id: str
    kind: str  # "ngram13" or "code_substring"
    match: str


_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier of the polynomial window hash


def word_hashes(words: list[str]) -> np.ndarray:
    """uint64 ``[len(words)]``: Python's ``hash`` of each word (salted per process: compare within one process)."""
    return np.fromiter(map(hash, words), dtype=np.int64, count=len(words)).view(np.uint64)


def window_hashes(w: np.ndarray, n: int) -> np.ndarray:
    """uint64 ``[len(w) - n + 1]``: a polynomial hash (wrapping) of every window of ``n`` word hashes ``w``.

    Equal windows hash equally; a match is always confirmed on the joined words (collisions cost a lookup).
    """
    if len(w) < n:
        return np.zeros(0, np.uint64)
    out = np.zeros(len(w) - n + 1, np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            out = out * _MULT + w[k:k + len(out)]
    return out


def _hash_table(grams: dict[str, tuple[str, str]], n: int) -> np.ndarray:
    """Sorted window hashes of the ``n``-word grams of ``grams`` (the membership pre-check of :func:`find`)."""
    return np.unique(np.array([window_hashes(word_hashes(g.split()), n)[0] for g in grams
                               if g.count(" ") + 1 == n], dtype=np.uint64))


def _first_match(words: list[str], wh: np.ndarray, n: int, grams: dict[str, tuple[str, str]], table: np.ndarray):
    hashes = window_hashes(wh, n)
    if not len(hashes) or not len(table):
        return None
    at = np.minimum(np.searchsorted(table, hashes), len(table) - 1)
    for i in np.flatnonzero(table[at] == hashes):
        gram = " ".join(words[i:i + n])
        if gram in grams:
            return gram
    return None


def find(text: str, index: EvalIndex) -> Match | None:
    """The first evaluation match of ``text`` (n-grams first, then whole short items, then code substrings),
    or None when it is clean. Windows are looked up by hash first (:func:`window_hashes`), then confirmed."""
    if index.grams or index.short:
        words = normalize(text).split()
        wh = word_hashes(words)
        for n, grams in [(N, index.grams)] + [(k, index.short) for k in sorted(index.short_lengths)]:
            if n not in index.tables:
                index.tables[n] = _hash_table(grams, n)
            gram = _first_match(words, wh, n, grams, index.tables[n])
            if gram is not None:
                return Match(*grams[gram], "ngram13", gram)
    if index.substrings:
        flat = squash_ws(text)
        for snippet, key in index.substrings.items():
            if snippet in flat:
                return Match(*key, "code_substring", snippet)
    return None
