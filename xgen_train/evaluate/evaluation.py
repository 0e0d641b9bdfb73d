"""Evaluation and reporting (SPEC §4 Figure 2, SPEC §6): perplexity by token position, pass@k, energy and CO2.

* :func:`ppl_by_position`: mean next-token cross-entropy (nats) and perplexity at every token position over
  documents of at least ``N`` tokens, each cut to its first ``N`` tokens, as the report's Figure 2
  ("perplexity as a function of token position on documents of at least 8K tokens; it should fall").
  Position ``p`` (1 .. N-1) is the 0-based index of the predicted token, i.e. the model saw ``p`` tokens
  of the document before predicting it; the first token (nothing to condition on) is not scored.
* :func:`pass_at_k`: the unbiased estimator ``1 - C(n-c, k) / C(n, k)`` of Chen et al. 2021 ("Evaluating
  Large Language Models Trained on Code", the Codex paper) in its numerically stable product form
  ``1 - prod_{i=n-c+1}^{n} (1 - k / i)``.
* :func:`carbon`: SPEC §6 energy ``MWh = device-hours x device kW x PUE`` and ``tCO2eq = MWh x kg/kWh``
  (kg per kWh equals tonnes per MWh).

This module imports JAX only inside :func:`ppl_by_position`.
"""
from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xgen_data.errors import InputError
from xgen_train.evaluate.inputs import InputList, json_lines, read_input, text_lines

__all__ = ["CarbonEstimate", "PassAtKError", "carbon", "emissions_text", "energy_text", "long_documents", "pass_at_k", "pass_at_k_table",
           "position_buckets", "ppl_by_position", "read_counts", "run_recipe", "trained_seq_len", "write_ppl_outputs"]

# SPEC §6: XGen-7B's training energy.
SPEC_DEVICE_HOURS = 270_336
SPEC_WATTS = 192.0
SPEC_PUE = 1.10
SPEC_KG_PER_KWH = 0.079


# ------------------------------------------------------------------------------------------------- carbon

@dataclass(frozen=True)
class CarbonEstimate:
    """SPEC §6 figures: ``kwh`` and ``mwh`` of energy, ``tco2eq`` tonnes of CO2-equivalent."""

    device_hours: float
    watts: float
    pue: float
    kg_per_kwh: float
    kwh: float
    mwh: float
    tco2eq: float


def carbon(device_hours: float = SPEC_DEVICE_HOURS, watts: float = SPEC_WATTS, pue: float = SPEC_PUE,
           kg_per_kwh: float = SPEC_KG_PER_KWH) -> CarbonEstimate:
    """Training energy and emissions (SPEC §6): ``kWh = device_hours * watts / 1000 * pue``;
    ``tCO2eq = kWh * kg_per_kwh / 1000``. Defaults are XGen-7B's (270,336 TPU-hours, 192 W, PUE 1.10,
    0.079 kg/kWh -> 57.09 MWh, 4.51 tCO2eq).

    Raises:
        ValueError: a negative or non-finite argument, or ``pue < 1`` (a PUE below 1 is impossible).
    """
    for name, v in (("device_hours", device_hours), ("watts", watts), ("pue", pue), ("kg_per_kwh", kg_per_kwh)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise InputError(f"{name} must be a finite number >= 0, got {v!r}")
    if pue < 1:
        raise InputError(f"pue must be >= 1 (total facility power / IT power), got {pue}")
    kwh = device_hours * watts / 1000.0 * pue
    return CarbonEstimate(device_hours, watts, pue, kg_per_kwh, kwh, kwh / 1000.0, kwh * kg_per_kwh / 1000.0)


def energy_text(kwh: float) -> str:
    """``kwh`` in the unit that keeps 3 significant digits readable: Wh below 1 kWh, kWh below 1 MWh, else MWh."""
    if kwh < 1:
        return f"{kwh * 1000:.3g} Wh"
    if kwh < 1000:
        return f"{kwh:,.3g} kWh" if kwh < 100 else f"{kwh:,.0f} kWh"
    return f"{kwh / 1000:,.1f} MWh"


def emissions_text(kg: float) -> str:
    """``kg`` of CO2-equivalent as gCO2eq below 1 kg, kgCO2eq below 1 t, else tCO2eq (3 significant digits or
    two decimals of a tonne), so a small run is never printed as 0."""
    if kg < 1:
        return f"{kg * 1000:.3g} gCO2eq"
    if kg < 1000:
        return f"{kg:,.3g} kgCO2eq" if kg < 100 else f"{kg:,.0f} kgCO2eq"
    return f"{kg / 1000:,.2f} tCO2eq"


# ------------------------------------------------------------------------------------------------- pass@k

class PassAtKError(InputError):
    """Bad per-problem counts (names the file and line) or a ``k`` larger than a problem's ``n``."""


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with ``n`` samples of which ``c`` are correct (Chen et al. 2021).

    ``1 - C(n-c, k) / C(n, k)`` computed as ``1 - prod_{i=n-c+1}^{n} (1 - k/i)`` (no huge binomials).
    Returns 1.0 when ``n - c < k`` (every draw of ``k`` contains a correct sample).

    Raises:
        PassAtKError: ``k < 1``, ``n < 1``, ``c`` outside ``[0, n]``, or ``k > n``.
    """
    if k < 1 or n < 1 or not 0 <= c <= n:
        raise PassAtKError(f"need n >= 1, 0 <= c <= n, k >= 1; got n={n}, c={c}, k={k}")
    if k > n:
        raise PassAtKError(f"k={k} exceeds the n={n} samples of a problem; pass@k needs k <= n")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def _count(value, key: str, where: str) -> int:
    if isinstance(value, str):
        value = value.strip()
        if not value.lstrip("-").isdigit():
            raise PassAtKError(f"{where}: {key!r} must be an integer, got {value!r}")
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise PassAtKError(f"{where}: {key!r} must be an integer, got {value!r}")
    return value


def read_counts(path: str | os.PathLike) -> InputList:
    """Per-problem ``(problem, n, c)`` from a JSONL file (one object per line with ``n`` and ``c``, and
    optionally ``task_id`` / ``problem``) or a CSV file with a header holding ``n`` and ``c`` columns
    (and optionally ``task_id`` / ``problem``). A file ending in ``.csv`` is CSV, anything else JSONL.
    Parsed from the bytes that are hashed: ``.input`` of the result is ``{"path", "sha256"}`` of the file read
    (:mod:`xgen_train.evaluate.inputs`).

    Raises:
        PassAtKError: naming ``file:line`` for a line that is not UTF-8, invalid JSON, a missing or non-integer
            ``n``/``c``, ``n < 1`` or ``c`` outside ``[0, n]``, a ``task_id`` / ``problem`` given twice (naming
            both lines); also for a file with no problem.
        OSError: the file cannot be read.
        InputError: ``path`` is not a regular file.
    """
    path = str(path)
    data, source = read_input(path)
    rows = InputList()
    rows.input = source
    first_at: dict[str, str] = {}

    def add(rec: dict, where: str, lineno: int) -> None:
        for key in ("n", "c"):
            if key not in rec or rec[key] in (None, ""):
                raise PassAtKError(f"{where}: key {key!r} missing")
        n, c = _count(rec["n"], "n", where), _count(rec["c"], "c", where)
        if n < 1 or not 0 <= c <= n:
            raise PassAtKError(f"{where}: need n >= 1 and 0 <= c <= n, got n={n}, c={c}")
        name = rec.get("task_id", rec.get("problem"))
        if name not in (None, ""):
            if str(name) in first_at:  # counted twice, the mean would weigh it twice
                raise PassAtKError(f"{where}: problem {str(name)!r} appears again (first at {first_at[str(name)]}); "
                                   "give each problem once, with its n samples and c correct")
            first_at[str(name)] = where
        rows.append((str(name) if name not in (None, "") else f"line {lineno}", n, c))

    if path.lower().endswith(".csv"):
        reader = csv.DictReader(line for _, line in text_lines(data, path, PassAtKError, keepends=True))
        if not reader.fieldnames or not {"n", "c"} <= {f.strip() for f in reader.fieldnames}:
            raise PassAtKError(f"{path}:1: CSV header must name columns 'n' and 'c', got {reader.fieldnames}")
        for rec in reader:
            add({k.strip(): v for k, v in rec.items() if k is not None}, f"{path}:{reader.line_num}",
                reader.line_num)
    else:
        for lineno, rec in json_lines(data, path, PassAtKError):
            if not isinstance(rec, dict):
                raise PassAtKError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
            add(rec, f"{path}:{lineno}", lineno)
    if not rows:
        raise PassAtKError(f"{path}: no problems found")
    return rows


def pass_at_k_table(counts: list[tuple[str, int, int]], ks: list[int]) -> dict[int, float]:
    """Mean pass@k over problems for each ``k`` (the HumanEval score, SPEC §6).

    Raises:
        PassAtKError: a ``k`` larger than some problem's ``n`` (names the problem), or ``k < 1``.
    """
    out = {}
    for k in ks:
        vals = []
        for name, n, c in counts:
            if k > n:
                raise PassAtKError(f"k={k} exceeds the n={n} samples of problem {name!r}; pass@k needs k <= n")
            vals.append(pass_at_k(n, c, k))
        out[k] = float(np.mean(vals))
    return out


# ------------------------------------------------------------------------------------ perplexity by position

def trained_seq_len(run: str | os.PathLike) -> int | None:
    """The longest sequence length a run trained on, from its ``run.json`` / ``summary.json`` / checkpoint
    metadata (the largest ``seq_len`` value found at any depth, e.g. per sub-stage); None when none is recorded."""
    run = Path(run)
    found: list[int] = []

    def walk(obj) -> None:
        if isinstance(obj, dict):
            for key, value in obj.items():
                if key == "seq_len" and isinstance(value, int) and not isinstance(value, bool):
                    found.append(value)
                else:
                    walk(value)
        elif isinstance(obj, list):
            for value in obj:
                walk(value)

    from xgen_train.loop.checkpoint import CheckpointError, checkpoint_source, read_meta

    for f in (run / "run.json", run / "summary.json"):
        if f.is_file():
            try:
                walk(json.loads(f.read_text(encoding="utf-8")))
            except ValueError:
                continue
    ckpt, _ = checkpoint_source(run)
    if ckpt is not None:
        try:
            walk(read_meta(ckpt))
        except CheckpointError:
            pass
    return max(found) if found else None


def run_recipe(run: str | os.PathLike):
    """The recipe a run's shards were built with: ``RUN/run.json`` names the shards folder, whose manifest records
    the recipe's TOML text (:func:`xgen_data.mixing.recipe.recorded`). None when the run records no shards folder
    or that folder is gone. Raises RecipeError when the recorded text does not parse."""
    from xgen_data.mixing import recipe

    shards = run_shards_dir(run)
    return recipe.recorded(shards) if shards else None


def run_shards_dir(run: str | os.PathLike) -> str | None:
    """The shards folder ``RUN/run.json`` records (``shards_dir``), or None: no run.json (a checkpoint or a Hugging
    Face folder), none recorded, or the folder holds no manifest any more."""
    try:
        shards = json.loads((Path(run) / "run.json").read_text(encoding="utf-8")).get("shards_dir")
    except (OSError, ValueError, AttributeError):
        return None
    return shards if isinstance(shards, str) and os.path.isfile(os.path.join(shards, "manifest.json")) else None


def training_documents(shards_dir: str) -> set[tuple[str, str]]:
    """``(subset, doc_id)`` of every document with a piece in a train-split shard of ``shards_dir`` (its
    ``.idx.parquet`` indexes, each checked against the manifest): what a run on these shards trains on. Documents
    outside it (not packed, or only in validation shards) are held out.

    Raises:
        ShardError: the manifest or an index file is missing or damaged.
    """
    from xgen_data.shards import shard_format

    manifest = shard_format.read_manifest(shards_dir)
    seen: set[tuple[str, str]] = set()
    for entry in manifest["shards"]:
        if entry.get("split", "train") == "train":
            t = shard_format.read_index(shards_dir, entry).select(["subset", "doc_id"])
            seen.update(zip(t.column("subset").to_pylist(), t.column("doc_id").to_pylist()))
    return seen


def long_document_keys(corpus_dir: str, min_tokens: int, max_docs: int | None = None,
                       subsets: list[str] | None = None, recipe=None,
                       exclude: set[tuple[str, str]] | None = None) -> list[tuple[str, str, int, str]]:
    """``(subset, part, row, id)`` of the kept documents with at least ``min_tokens`` tokens (see
    :func:`long_documents`), skipping those whose ``(subset, id)`` is in ``exclude``; at most ``max_docs``."""
    from xgen_data.stats import sql
    from xgen_data.store.corpus import Corpus

    corpus = Corpus(corpus_dir)
    known = corpus.subsets()
    for s in subsets or []:
        if s not in known:
            raise InputError(f"{corpus_dir}: no subset {s!r}; subsets: {', '.join(known) or '(none)'}")
    con = sql.connect(corpus_dir, recipe=recipe)
    where = "kept" + (f" AND subset IN ({', '.join('?' * len(subsets))})" if subsets else "")
    params = list(subsets or [])
    total, longest = con.execute(f"SELECT count(*), coalesce(max(n_tokens), 0) FROM documents WHERE {where}",
                                 params).fetchone()
    limit = "" if max_docs is None or exclude else f" LIMIT {int(max_docs)}"
    rows = con.execute(f"SELECT subset, part, row, id FROM documents WHERE {where} AND n_tokens >= ? "
                       f"ORDER BY subset, part, row{limit}", params + [int(min_tokens)]).fetchall()
    long_ones = len(rows)
    if exclude:
        rows = [r for r in rows if (r[0], r[3]) not in exclude][:max_docs]
    if not rows:
        undecided = con.execute("SELECT count(*) FILTER (WHERE kept IS NULL), count(*) FROM documents").fetchone()
        if total == 0 and undecided[0] == undecided[1] > 0:
            raise InputError(f"{corpus_dir}: no document has a keep decision yet (kept is NULL: no recipe given "
                             "and no `xgen filter`/`xgen dedup` run); pass --recipe, e.g. the recipe the shards "
                             "were built with (the demo's W/recipe.toml)")
        if long_ones:
            raise InputError(f"{corpus_dir}: all {long_ones:,} kept documents of at least {min_tokens:,} tokens are "
                             "in the run's training shards (none is held out); pass a smaller --length or drop "
                             "--held-out")
        raise InputError(f"{corpus_dir}: no kept document has at least {min_tokens:,} tokens ({total:,} kept "
                         f"documents{' in ' + ', '.join(subsets) if subsets else ''}; the longest has "
                         f"{longest:,} tokens); pass a smaller --length")
    return [(s, p, int(r), i) for s, p, r, i in rows]


def document_tokens(corpus_dir: str, keys: list[tuple[str, str, int, str]], min_tokens: int) -> list[np.ndarray]:
    """The first ``min_tokens`` tokens (int32, shape ``[min_tokens]``) of each document of ``keys``
    (:func:`long_document_keys`), in part, row order."""
    import pyarrow.parquet as pq

    from xgen_data.store.corpus import Corpus

    by_part: dict[tuple[str, str], list[int]] = {}
    for subset, part, row, _ in keys:
        by_part.setdefault((subset, part), []).append(int(row))
    paths = {(p.subset, p.name): p.path for p in Corpus(corpus_dir).parts()}
    docs: list[np.ndarray] = []
    for key in sorted(by_part):
        table = pq.read_table(paths[key], columns=["tokens"]).take(by_part[key])
        for tokens in table.column("tokens").to_pylist():
            docs.append(np.asarray(tokens[:min_tokens], dtype=np.int32))
    return docs


def long_documents(corpus_dir: str, min_tokens: int, max_docs: int | None = None,
                   subsets: list[str] | None = None, recipe=None) -> list[np.ndarray]:
    """The first ``min_tokens`` tokens of each kept document with at least ``min_tokens`` tokens.

    Documents come from the corpus's registered parts (``tokens`` column), kept ones only (the
    ``documents`` SQL view's ``kept`` under ``recipe``'s decisions, a :class:`xgen_data.mixing.recipe.Recipe`, or
    the corpus defaults when None: no filter or dedup drop reason), in subset, part, row order; at most
    ``max_docs``. Returns int32 arrays of shape ``[min_tokens]``.

    Raises:
        InputError: not a corpus; an unknown subset; no document long enough (the message gives how many
            kept documents there are and the longest one's length).
    """
    keys = long_document_keys(corpus_dir, min_tokens, max_docs, subsets, recipe)
    return document_tokens(corpus_dir, keys, min_tokens)


@dataclass
class PositionPerplexity:
    """Per-position results of :func:`ppl_by_position`.

    ``positions``: int ``[N-1]`` = 1..N-1; ``mean_nll``: float64 ``[N-1]`` nats; ``ppl`` = ``exp(mean_nll)``;
    ``n_docs``: documents averaged at every position; ``min_tokens``: N.
    """

    positions: np.ndarray
    mean_nll: np.ndarray
    ppl: np.ndarray
    n_docs: int
    min_tokens: int


def ppl_by_position(params, cfg, docs: list[np.ndarray], batch_size: int | None = None,
                    compute_dtype: str = "float32", progress: bool = False) -> PositionPerplexity:
    """Mean next-token cross-entropy at each position over equal-length documents (Figure 2, SPEC §4).

    Args:
        params, cfg: the model (:mod:`xgen_train.model.model`).
        docs: int arrays, all of length ``N <= cfg.max_positions`` (from :func:`long_documents`).
        batch_size: documents per forward pass (default: about 4,096 tokens per batch).
    Raises:
        ValueError: no documents, unequal lengths, ``N < 2`` or ``N > max_positions``.
    """
    import jax
    import jax.numpy as jnp

    from xgen_train.model.model import build_model

    if not docs:
        raise InputError("no documents to evaluate")
    n = len(docs[0])
    if any(len(d) != n for d in docs):
        raise InputError("documents must all have the same length (cut them with long_documents)")
    if not 2 <= n <= cfg.max_positions:
        raise InputError(f"document length {n} must be in [2, max_positions={cfg.max_positions}]")
    bs = min(batch_size or max(1, 4096 // n), len(docs))
    apply = build_model(cfg, compute_dtype).apply

    @jax.jit
    def nll(p, tokens):
        logits = apply(p, tokens)[:, :-1]
        lse = jax.nn.logsumexp(logits, axis=-1)
        tgt = jnp.take_along_axis(logits, tokens[:, 1:, None], axis=-1)[..., 0]
        return lse - tgt  # [B, N-1] nats

    params = jax.tree.map(jnp.asarray, params)
    total = np.zeros(n - 1, np.float64)
    arr = np.stack(docs)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(docs), unit="doc", desc="ppl-by-position")
    for i in range(0, len(arr), bs):
        chunk = arr[i:i + bs]
        real = len(chunk)
        if real < bs:  # same shape every batch: one compilation
            chunk = np.concatenate([chunk, np.repeat(chunk[:1], bs - real, axis=0)])
        out = np.asarray(nll(params, jnp.asarray(chunk)), np.float64)[:real]
        total += out.sum(axis=0)
        if bar:
            bar.update(real)
    if bar:
        bar.close()
    mean = total / len(docs)
    return PositionPerplexity(np.arange(1, n), mean, np.exp(mean), len(docs), n)


def position_buckets(res: PositionPerplexity) -> list[tuple[int, int, float, float]]:
    """Log2 buckets of positions ``[1,2), [2,4), [4,8) ...`` (the last one ends at N-1):
    ``(first, last, mean_nll, ppl)`` with the mean over the bucket's positions."""
    out = []
    lo = 1
    while lo <= res.positions[-1]:
        hi = min(lo * 2, int(res.positions[-1]) + 1)
        m = float(res.mean_nll[lo - 1:hi - 1].mean())
        out.append((lo, hi - 1, m, math.exp(m)))
        lo = hi
    return out


def write_ppl_outputs(res: PositionPerplexity, out_dir: str | os.PathLike, title: str = "") -> dict[str, Path]:
    """Write ``ppl_by_position.csv`` (position, n, mean_nll, ppl), ``ppl_by_position_buckets.csv``
    (first, last, n, mean_nll, ppl) and ``ppl_by_position.png`` (Figure 2: perplexity vs position, log x,
    per-position curve and log2-bucket means) into ``out_dir``, each atomically. Returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from xgen_data.store.fsutil import atomic_path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "ppl_by_position.csv", "buckets": out / "ppl_by_position_buckets.csv",
             "png": out / "ppl_by_position.png"}
    with atomic_path(str(paths["csv"])) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["position", "n", "mean_nll", "ppl"])
        for p, m, q in zip(res.positions, res.mean_nll, res.ppl):
            w.writerow([int(p), res.n_docs, f"{m:.6f}", f"{q:.4f}"])
    buckets = position_buckets(res)
    with atomic_path(str(paths["buckets"])) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["first", "last", "n", "mean_nll", "ppl"])
        for lo, hi, m, q in buckets:
            w.writerow([lo, hi, res.n_docs, f"{m:.6f}", f"{q:.4f}"])
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(res.positions, res.ppl, color="0.75", lw=0.6, label="per position")
    centers = [math.sqrt(lo * hi) for lo, hi, _, _ in buckets]
    ax.plot(centers, [q for *_, q in buckets], "o-", color="tab:blue", label="log2-bucket mean")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("token position")
    ax.set_ylabel("perplexity")
    ax.set_title(title or f"Perplexity by position ({res.n_docs} documents of >= {res.min_tokens:,} tokens)",
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(str(paths["png"])) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return paths
