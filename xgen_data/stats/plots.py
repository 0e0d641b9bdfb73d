"""Plots of corpus statistics (matplotlib, PNG): document length histograms per subset; code tokens per
language before and after each license policy."""
from __future__ import annotations

import os

import numpy as np

from xgen_data import query
from xgen_data.attributes import licenses
from xgen_data.mixing import decisions
from xgen_data.stats import sql
from xgen_data.store import fsutil
from xgen_data.store.corpus import Corpus, CorpusError


def length_histogram(corpus_dir: str, path: str, min_tokens: int | None = 100, recipe=None) -> str:
    """Histogram of document lengths in tokens per subset (log-spaced bins), all documents vs kept ones.

    Args:
        corpus_dir: the corpus; path: PNG to write (atomically); min_tokens: draw the length filter's
            threshold (SPEC §2) as a vertical line, None for none; recipe: whose decisions give ``kept``
            (default: the corpus defaults, :func:`xgen_data.stats.sql.connect`).
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


def language_policy_tokens(corpus_dir: str, recipe=None) -> tuple[dict[str, dict[str, int]], list[str]]:
    """Tokens per programming language, in all code documents and in those each license policy passes.

    Code documents: those of subsets held to a license policy (the recipe's, else the corpus defaults') or
    whose language is one of :mod:`xgen_data.attributes.languages`. Policies: ``permissive`` (the recipe's or the
    defaults' allow-list) and every other policy the recipe names, from their committed ``license``
    attribute sets (a policy whose set was never computed is left out). ``pass`` is the attribute (header
    check included); the exact-copies rule of ``strict`` is a decision of the documents view, not counted here.

    Returns:
        ``({language: {"all": tokens, <policy>: tokens, ...}}, [policy names])``; language ``(unknown)`` for
        documents the table does not identify.
    """
    import pyarrow.parquet as pq


    corpus = Corpus(corpus_dir)
    dec = decisions.for_corpus(corpus, recipe)
    flt = dec.filter or {"allow": sorted(licenses.default_allow_list()), "license_subsets": [], "policies": {}}
    sets = {"permissive": (flt["allow"], False)}
    held = query.policies_of(flt)
    for pol in held.values():
        sets.setdefault(pol["name"], (pol["allow"], pol["labels_must_agree"]))
    con = sql.connect(corpus_dir, recipe=recipe, quiet=True)
    rows = con.execute(f"""SELECT subset, id, n_tokens, coalesce(language, '(unknown)') AS language
        FROM documents WHERE subset IN ({', '.join("'" + s.replace("'", "''") + "'" for s in held) or "''"})
            OR subset IN (SELECT DISTINCT subset FROM documents WHERE language_is_code)""").fetchall()
    out: dict[str, dict[str, int]] = {}
    for _, _, n, lang in rows:
        out.setdefault(lang, {"all": 0})["all"] += int(n)
    names = []
    keys = {(s, i) for s, i, _, _ in rows}
    for name, (allow, labels) in sets.items():
        try:
            files = [f for _, f in corpus.attribute_files("license", licenses.license_params(allow, labels))]
        except CorpusError:
            continue
        names.append(name)
        passed = set()
        for f in files:
            sub = os.path.basename(os.path.dirname(f))
            t = pq.read_table(f, columns=["id", "license_pass"]).to_pydict()
            passed.update((sub, i) for i, ok in zip(t["id"], t["license_pass"]) if ok and (sub, i) in keys)
        for s, i, n, lang in rows:
            out[lang].setdefault(name, 0)
            if (s, i) in passed:
                out[lang][name] += int(n)
    return out, names


def language_policy_plot(corpus_dir: str, path: str, recipe=None, top: int = 30) -> str:
    """PNG of tokens per programming language before and after each license policy
    (:func:`language_policy_tokens`), the ``top`` languages by tokens. Returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data, names = language_policy_tokens(corpus_dir, recipe)
    langs = sorted(data, key=lambda k: (-data[k]["all"], k))[:top]
    fig, ax = plt.subplots(figsize=(8, 0.35 * max(len(langs), 1) * (1 + len(names)) / 2 + 1.2))
    y = np.arange(len(langs))
    h = 0.8 / (1 + len(names))
    for j, name in enumerate(["all"] + names):
        ax.barh(y + j * h, [data[lang].get(name, 0) for lang in langs], height=h,
                label="before any policy" if name == "all" else f"pass {name}")
    ax.set_yticks(y + 0.4 - h / 2, langs, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("tokens")
    ax.set_title("Code tokens per language, before and after each license policy", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with fsutil.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path
