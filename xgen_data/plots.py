"""Plots of corpus statistics (matplotlib, PNG): document length histograms per subset."""
from __future__ import annotations

import numpy as np

from xgen_data import fsutil, sql


def length_histogram(corpus_dir: str, path: str, min_tokens: int | None = 100, recipe=None) -> str:
    """Histogram of document lengths in tokens per subset (log-spaced bins), all documents vs kept ones.

    Args:
        corpus_dir: the corpus; path: PNG to write (atomically); min_tokens: draw the length filter's
            threshold (SPEC §2) as a vertical line, None for none; recipe: whose decisions give ``kept``
            (default: the corpus defaults, :func:`xgen_data.sql.connect`).
    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    con = sql.connect(corpus_dir, recipe=recipe)
    rows = con.execute("SELECT subset, n_tokens, coalesce(kept, FALSE) AS kept FROM documents").fetchnumpy()
    subsets = sorted(set(rows["subset"].tolist()))
    n_tokens = rows["n_tokens"].astype(np.int64)
    kept = rows["kept"].astype(bool)
    bins = np.logspace(0, np.log10(max(2, int(n_tokens.max(initial=1)) + 1)), 60)
    fig, axes = plt.subplots(len(subsets), 1, figsize=(8, 2.4 * len(subsets) + 0.6), squeeze=False)
    for ax, subset in zip(axes[:, 0], subsets):
        sel = rows["subset"] == subset
        ax.hist(np.maximum(n_tokens[sel], 1), bins=bins, color="0.75", label=f"all ({int(sel.sum()):,})")
        ax.hist(np.maximum(n_tokens[sel & kept], 1), bins=bins, color="tab:blue", alpha=0.8,
                label=f"kept ({int((sel & kept).sum()):,})")
        if min_tokens:
            ax.axvline(min_tokens, color="tab:red", lw=1, ls="--", label=f"{min_tokens} tokens")
        ax.set_xscale("log")
        ax.set_title(subset, loc="left", fontsize=10)
        ax.set_ylabel("documents")
        ax.legend(fontsize=8)
    axes[-1, 0].set_xlabel("document length (tokens)")
    fig.tight_layout()
    with fsutil.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path
