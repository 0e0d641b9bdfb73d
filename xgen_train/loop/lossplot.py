"""Figure 1 of the XGen report (SPEC §4): cross-entropy over tokens seen, across the curriculum's sub-stages.

Reads a run's ``metrics.jsonl`` (:mod:`xgen_train.loop.trainer`): train records (``loss``, ``tokens_seen``),
validation records (``"event": "val"``, ``val_loss``) and sub-stage switches (``"event": "switch"``).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from xgen_data.errors import InputError

__all__ = ["Boundary", "boundaries", "plot_loss", "read_metrics"]


@dataclass(frozen=True)
class Boundary:
    """Start of a sub-stage on the x axis: ``tokens_seen`` before its first update, and its label."""

    step: int
    tokens_seen: int
    stage: str
    substage: str
    seq_len: int

    @property
    def label(self) -> str:
        return f"{self.stage}/{self.substage} (seq {self.seq_len})"


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Records of a ``metrics.jsonl`` file (or of ``RUN/metrics.jsonl`` for a run directory).

    Raises:
        InputError: no metrics file, or a line that is not JSON (names file and line).
    """
    p = Path(path)
    if p.is_dir():
        p = p / "metrics.jsonl"
    if not p.is_file():
        raise InputError(f"{p}: no metrics.jsonl (not a training run directory?)")
    out = []
    with open(p, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise InputError(f"{p}:{n}: not valid JSON: {exc}") from None
    return out


def boundaries(records: list[dict]) -> list[Boundary]:
    """Every sub-stage start in the records: the first phase (``"event": "start"``) and each switch."""
    return [Boundary(r["step"], r["tokens_seen"], r["to"]["stage"], r["to"]["substage"], r["to"]["seq_len"])
            for r in records if r.get("event") in ("start", "switch")]


def plot_loss(records: list[dict], path: str | os.PathLike, title: str = "") -> dict:
    """Write Figure 1 as a PNG (Agg backend): train loss (and validation loss) against tokens seen.

    Each sub-stage start is a vertical dashed line labelled ``stage/substage (seq N)``; loss spikes are red
    dots. Validation loss is one line per sub-stage (each has its own held-out sequences: points of different
    sub-stages are never joined). Returns ``{"path": Path, "boundaries": [Boundary, ...], "train_points": int,
    "val_points": int, "val_lines": int}``.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    train = [r for r in records if "event" not in r and "loss" in r]
    val = [r for r in records if r.get("event") == "val"]
    bounds = boundaries(records)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    ax.plot([r["tokens_seen"] for r in train], [r["loss"] for r in train], lw=1.0, label="train loss")
    segments: list[list[dict]] = []  # one line per sub-stage: each has its own held-out set
    for r in val:
        if not segments or (segments[-1][-1]["stage"], segments[-1][-1]["substage"]) != (r["stage"], r["substage"]):
            segments.append([])
        segments[-1].append(r)
    for k, seg in enumerate(segments):
        ax.plot([r["tokens_seen"] for r in seg], [r["val_loss"] for r in seg], "o-", ms=3, lw=1.2, color="tab:green",
                label="validation loss (held-out sequences of the sub-stage)" if k == 0 else None)
    spikes = [(r["tokens_seen"], r["loss"]) for r in train if r.get("spike")]
    if spikes:
        ax.scatter(*zip(*spikes), color="red", s=12, zorder=3, label="spike (mean + 6 std, 128 steps)")
    for b in bounds:
        ax.axvline(b.tokens_seen, color="gray", ls="--", lw=0.8)
        ax.annotate(b.label, xy=(b.tokens_seen, 1.0), xycoords=("data", "axes fraction"), rotation=90,
                    va="top", ha="right", fontsize=7, color="dimgray", xytext=(-2, -2), textcoords="offset points")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title or "Training loss across the curriculum (Figure 1)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return {"path": path, "boundaries": bounds, "train_points": len(train), "val_points": len(val),
            "val_lines": len(segments)}
