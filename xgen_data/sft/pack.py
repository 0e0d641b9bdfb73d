"""Packing whole SFT examples into fixed-length rows: best-fit decreasing, seeded.

Examples are first put in a seeded random order, then sorted by length, longest first (a stable sort, so equal
lengths keep the seeded order); each goes into the open row with the least room that still holds it (best fit),
or a new row. Rows are finally put in a seeded random order. An example never crosses a row. Examples longer
than a row are dropped (``overlong="drop"``) or cut to the row length keeping their start (``"truncate"``),
in which case one whose targets were all cut away is dropped; both are counted. Best-fit decreasing uses at
most 11/9·OPT + 6/9 rows (Dósa 2007); :func:`first_fit` (arrival order, no sort) is the baseline the benchmark
prints beside it.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np

from xgen_data.errors import InputError


@dataclass
class Packing:
    """Where each kept example goes: ``rows[r]`` lists example numbers in row order; counts of the rest."""

    rows: list[list[int]]
    lengths: np.ndarray  # int64 [n_examples]: length after truncation (0 for a dropped example)
    dropped_overlong: list[int] = field(default_factory=list)
    truncated: list[int] = field(default_factory=list)
    dropped_no_target: list[int] = field(default_factory=list)  # truncate cut every target away


def fit_lengths(lengths: np.ndarray, masks: list[np.ndarray], seq_len: int, overlong: str) -> Packing:
    """Apply the overlong rule: the packable length of every example and the dropped / truncated ones."""
    if overlong not in ("drop", "truncate"):
        raise InputError(f"overlong must be 'drop' or 'truncate', got {overlong!r}")
    out = Packing([], np.asarray(lengths, dtype=np.int64).copy())
    for i in np.flatnonzero(out.lengths > seq_len):
        if overlong == "drop":
            out.dropped_overlong.append(int(i))
            out.lengths[i] = 0
        elif not masks[i][:seq_len].any():
            out.dropped_no_target.append(int(i))
            out.lengths[i] = 0
        else:
            out.truncated.append(int(i))
            out.lengths[i] = seq_len
    return out


def best_fit_decreasing(lengths: np.ndarray, seq_len: int, seed: int) -> list[list[int]]:
    """Rows of example numbers; examples of length 0 are left out.

    Args:
        lengths: int ``[n]``, each ``<= seq_len``.
    Returns:
        rows in a seeded random order, each a list of example numbers whose lengths sum to ``<= seq_len``.
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(lengths))
    order = order[np.argsort(-np.asarray(lengths)[order], kind="stable")]
    rows: list[list[int]] = []
    room: list[tuple[int, int]] = []  # sorted (free tokens, row number) of rows that still have room
    for i in order:
        n = int(lengths[i])
        if n == 0:
            continue
        k = bisect.bisect_left(room, (n, -1))
        if k == len(room):
            rows.append([int(i)])
            free, r = seq_len - n, len(rows) - 1
        else:
            free, r = room.pop(k)
            rows[r].append(int(i))
            free -= n
        if free > 0:
            bisect.insort(room, (free, r))
    return [rows[r] for r in rng.permutation(len(rows))]


def first_fit(lengths: np.ndarray, seq_len: int, seed: int) -> list[list[int]]:
    """Greedy first fit in a seeded arrival order (no sort): each example goes into the earliest row that
    holds it. The baseline for :func:`best_fit_decreasing`; same arguments and result."""
    order = np.random.default_rng(seed).permutation(len(lengths))
    free = np.zeros(0, dtype=np.int64)
    rows: list[list[int]] = []
    for i in order:
        n = int(lengths[i])
        if n == 0:
            continue
        fits = np.flatnonzero(free >= n)
        if len(fits):
            free[fits[0]] -= n
            rows[fits[0]].append(int(i))
        else:
            free = np.append(free, seq_len - n)
            rows.append([int(i)])
    return rows


def fill_rows(rows: list[list[int]], ids: list[np.ndarray], masks: list[np.ndarray], lengths: np.ndarray,
              seq_len: int) -> dict[str, np.ndarray]:
    """The packed arrays: ``tokens`` uint16, ``loss_mask`` uint8, ``segment_ids`` uint16, each
    ``[len(rows), seq_len]``; example ``rows[r][j]`` fills segment ``j + 1`` of row ``r`` (its first
    ``lengths[i]`` tokens); the rest of a row is padding (0 everywhere)."""
    out = {"tokens": np.zeros((len(rows), seq_len), np.uint16),
           "loss_mask": np.zeros((len(rows), seq_len), np.uint8),
           "segment_ids": np.zeros((len(rows), seq_len), np.uint16)}
    for r, row in enumerate(rows):
        at = 0
        for j, i in enumerate(row):
            n = int(lengths[i])
            out["tokens"][r, at:at + n] = ids[i][:n]
            out["loss_mask"][r, at:at + n] = masks[i][:n]
            out["segment_ids"][r, at:at + n] = j + 1
            at += n
    return out


def padding_share(rows: list[list[int]], lengths: np.ndarray, seq_len: int) -> float:
    """Share of row tokens that are padding (0.0 when there is no row)."""
    total = len(rows) * seq_len
    used = sum(int(lengths[i]) for row in rows for i in row)
    return (total - used) / total if total else 0.0
