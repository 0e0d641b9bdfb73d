"""Document selection and the packing plan: which documents each stage packs, in which order (SPEC §2).

:func:`plan_packing` is the whole of planning for ``xgen mix build``: per stage, seeded from the recipe seed
(:func:`xgen_data.mixing.mixture.stage_seed`), it selects document instances per subset by sampling proportion
(or per language), shuffles them uniformly into stream order, cuts the stream into one chunk per sub-stage and
draws each chunk's sequence permutation. :mod:`xgen_data.shards.packing` consumes the :class:`PackPlan`
(it reads tokens and writes shards) and never calls back into mixing.

Memory holds per-document integers only (:class:`SubsetDocs`: a few dozen bytes per kept document; the
instances and permutations of a stage), never tokens.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from xgen_data import query
from xgen_data.errors import InputError
from xgen_data.mixing import decisions
from xgen_data.mixing import recipe as recipe_mod
from xgen_data.mixing.mixture import (
    UNKNOWN_LANGUAGE,
    effective_tokens,
    language_plan,
    language_targets,
    plan,
    select_documents,
    stage_seed,
)
from xgen_data.mixing.recipe import Recipe
from xgen_data.store.corpus import Corpus


def _decisions(corpus_dir: str, recipe: Recipe | None) -> query.Decisions:
    return decisions.for_corpus(Corpus(corpus_dir), recipe)


@dataclass
class SubsetDocs:
    """The kept documents of one subset, in corpus order: parallel columns, one entry per document.

    Compact by design, so a build over many millions of documents holds a few dozen bytes per document:
    part and language are dictionary codes (int32 into ``part_names`` / ``languages``), ids and sources stay
    Arrow string arrays (no Python object per document).
    """

    name: str
    part_code: np.ndarray  # int32: index into part_names
    part_names: list[str]  # part file names
    row: np.ndarray  # int64: row in the part
    doc_id: pa.Array  # string: document id
    source: pa.Array  # string ('' when the record has none)
    n_tokens: np.ndarray  # int64
    lang_code: np.ndarray  # int32: index into languages
    languages: list[str]  # language keys; UNKNOWN_LANGUAGE for documents without one

    @property
    def costs(self) -> np.ndarray:
        return self.n_tokens + 1

    def language_of(self, idx) -> list[str]:
        """Language keys of documents ``idx`` (int indices into this subset)."""
        return [self.languages[c] for c in self.lang_code[np.asarray(idx, dtype=np.int64)].tolist()]

    def tokens_by_language(self) -> dict[str, int]:
        """``{language: unique tokens incl. one EOS per document}`` over the languages present, sorted."""
        tot = np.bincount(self.lang_code, weights=self.costs, minlength=len(self.languages))
        cnt = np.bincount(self.lang_code, minlength=len(self.languages))
        return {self.languages[i]: int(round(tot[i])) for i in np.argsort(self.languages).tolist() if cnt[i]}

    def take(self, column: str, idx: np.ndarray) -> list[str]:
        """Values of the string column ``doc_id`` or ``source`` for documents ``idx``."""
        return getattr(self, column).take(pa.array(np.asarray(idx, dtype=np.int64))).to_pylist()


def _codes(col: pa.ChunkedArray, null: str | None = None) -> tuple[np.ndarray, list[str]]:
    """Dictionary codes (int32) and the names they index, of a string column (nulls become ``null``)."""
    if null is not None:
        col = pc.fill_null(col, null)
    enc = col.combine_chunks().dictionary_encode() if len(col) else pa.array([], pa.string()).dictionary_encode()
    return enc.indices.to_numpy(zero_copy_only=False).astype(np.int32), enc.dictionary.to_pylist()


def kept_documents(corpus_dir: str, subsets: list[str], recipe: Recipe | None = None) -> dict[str, SubsetDocs]:
    """Kept documents per subset under ``recipe``'s decisions (the ``documents`` view, ``kept``), by part and row.

    Raises:
        CorpusError: the recipe's attributes are missing or out of date (run the recipe flow,
            :func:`xgen_data.mixing.pipeline.apply_recipe_steps`, first).
    """
    con = query.connect(corpus_dir, _decisions(corpus_dir, recipe))
    out = {}
    for name in subsets:
        t = con.sql("""SELECT part, row, id, coalesce(source, '') AS source, n_tokens, language FROM documents
                           WHERE kept AND subset = ? ORDER BY part, row""", params=[name]).to_arrow_table()
        part_code, part_names = _codes(t["part"])
        lang_code, langs = _codes(t["language"], UNKNOWN_LANGUAGE)
        out[name] = SubsetDocs(name, part_code, part_names, t["row"].to_numpy().astype(np.int64),
                               t["id"].combine_chunks(), t["source"].combine_chunks(),
                               t["n_tokens"].to_numpy().astype(np.int64), lang_code, langs)
        del t
    return out


def why_empty(corpus_dir: str, subset: str, recipe: Recipe | None = None) -> str:
    """A sentence saying why ``subset`` has no kept documents: absent, or dropped (with reasons and licenses)."""
    corpus = Corpus(corpus_dir)
    if subset not in corpus.subsets():
        return (f"subset {subset!r} is not in {corpus_dir} (subsets there: {', '.join(corpus.subsets()) or 'none'}); "
                f"ingest it with `xgen ingest --corpus {corpus_dir} --subset {subset} FILES`")
    con = query.connect(corpus_dir, _decisions(corpus_dir, recipe), quiet=True)
    reasons = con.execute("SELECT drop_reason, count(*) FROM documents WHERE subset = ? GROUP BY ALL ORDER BY 2 DESC",
                          [subset]).fetchall()
    text = f"subset {subset!r} has no kept documents: " + ", ".join(f"{r} {n:,}" for r, n in reasons)
    lic = con.execute("""SELECT license, count(*) FROM documents WHERE subset = ? AND drop_reason = ?
                         GROUP BY ALL ORDER BY 2 DESC LIMIT 3""", [subset, query.REASON_LICENSE]).fetchall()
    if lic:
        policy = recipe.license_policies().get(subset, "permissive") if recipe is not None else "permissive"
        top = con.execute("""SELECT reason, count(*) FROM documents WHERE subset = ? AND drop_reason = ?
                             GROUP BY ALL ORDER BY 2 DESC LIMIT 3""", [subset, query.REASON_LICENSE]).fetchall()
        text += ("; licenses dropped: " + ", ".join(f"{x} ({n:,})" for x, n in lic)
                 + f"; policy {policy} reasons: " + ", ".join(f"{x} ({n:,})" for x, n in top))
        where = f"recipe {recipe.path or recipe.name}" if recipe is not None else "the recipe"
        text += (f"; allow one with [filters] license_allow_extra in {where} (recipes carry their own filters; "
                 "`xgen filter --allow-license` changes only the corpus's default decisions)"
                 if policy == "permissive" else
                 f"; policy {policy} is configuration (xgen_data/licenses_{policy}.toml); a recipe adds to it with "
                 f"[filters] policy_allow_extra = {{ {policy} = [...] }}")
    return text


def subset_stats(docs: dict[str, SubsetDocs]) -> dict[str, tuple[int, int]]:
    """``{subset: (documents, unique tokens incl. EOS)}`` for :func:`xgen_data.mixing.mixture.plan`."""
    return {k: (len(v.n_tokens), int(v.costs.sum())) for k, v in docs.items()}


@dataclass
class Instances:
    """Document instances of one stage in stream order (parallel int64 arrays)."""

    subset: np.ndarray  # index into the stage's sorted subset names
    doc: np.ndarray  # index into that subset's SubsetDocs
    take: np.ndarray  # content tokens used (a prefix of the document)
    pos: np.ndarray  # start of the instance in the stage stream; its EOS sits at pos + take

    @property
    def stream_len(self) -> int:
        return int(self.pos[-1] + self.take[-1] + 1) if len(self.pos) else 0


def _select(d: SubsetDocs, stage, name: str, target: int, rng: np.random.Generator):
    """One subset's instances: by proportion, or per language (stage ``languages``), each language exactly at
    its target (:func:`xgen_data.mixing.mixture.language_targets`), languages in sorted order."""
    if name not in stage.languages:
        return select_documents(d.costs, target, rng)
    per = language_targets(stage, name, target, d.tokens_by_language())
    code = {lang: i for i, lang in enumerate(d.languages)}
    idx, take = [], []
    for lang in sorted(per):
        members = np.flatnonzero(d.lang_code == code[lang]) if lang in code else np.zeros(0, np.int64)
        i, t = select_documents(d.costs[members], per[lang], rng)
        idx.append(members[i])
        take.append(t)
    return np.concatenate(idx) if idx else np.zeros(0, np.int64), np.concatenate(take) if take else np.zeros(0, np.int64)


def select_instances(docs: dict[str, SubsetDocs], stage, subsets: list[str], rng: np.random.Generator) -> Instances:
    """Steps 1-2 of the module docstring: per-subset selection by proportion, then one uniform shuffle."""
    targets = effective_tokens(stage)
    picked = [_select(docs[name], stage, name, targets[name], rng) for name in subsets]
    order = rng.permutation(sum(len(d) for d, _ in picked))
    subset = np.concatenate([np.full(len(d), k, dtype=np.int64) for k, (d, _) in enumerate(picked)])[order]
    doc = np.concatenate([d for d, _ in picked])[order]
    take = np.concatenate([t for _, t in picked])[order]
    pos = np.zeros(len(order), dtype=np.int64)
    np.cumsum(take[:-1] + 1, out=pos[1:])
    return Instances(subset, doc, take, pos)


def recipe_toml(r: Recipe) -> str:
    """The TOML text of the recipe as packed: its file's text (comments included) when the recipe is what
    that file says, else :func:`xgen_data.mixing.recipe.to_toml` of it (a recipe changed in memory, or one without
    a file). The manifest stores it with its SHA-256."""
    if r.path and os.path.isfile(r.path):
        try:
            with open(r.path, "rb") as f:
                text = f.read().decode("utf-8")
            if recipe_mod.load(r.path) == r:
                return text
        except (UnicodeDecodeError, ValueError):
            pass
    return recipe_mod.to_toml(r)


@dataclass
class ChunkPlan:
    """One sub-stage's chunk of the stage stream: ``n_sequences`` sequences of ``substage.seq_len`` tokens from
    token ``start``; output row ``r`` holds sequence ``permutation[r]`` (int64 ``[n_sequences]``)."""

    substage: Any  # xgen_data.mixing.recipe.SubStage
    start: int
    n_sequences: int
    permutation: np.ndarray


@dataclass
class StagePlan:
    """One stage: its instances in stream order over ``subsets`` (sorted names) and its chunks."""

    name: str
    tokens: int
    languages: tuple[str, ...]  # subsets whose tokens are reported per language
    subsets: list[str]
    instances: Instances
    chunks: list[ChunkPlan] = field(default_factory=list)


@dataclass
class PackPlan:
    """Everything ``xgen mix build`` packs, decided: the kept documents, the mixture and language plans (manifest
    rows), and each stage's instances and chunks. ``recipe_text`` is the recipe's TOML as packed."""

    recipe_name: str
    recipe_text: str
    seed: int
    docs: dict[str, SubsetDocs]
    mixture: list[dict]
    language_plan: list[dict]
    stages: list[StagePlan]


def _stage_plan(docs: dict[str, SubsetDocs], stage, seed: int) -> StagePlan:
    rng = np.random.Generator(np.random.PCG64(stage_seed(seed, stage.name)))
    subsets = sorted(stage.proportions)
    inst = select_instances(docs, stage, subsets, rng)
    out = StagePlan(stage.name, stage.tokens, tuple(sorted(stage.languages)), subsets, inst)
    start = 0
    for sub in stage.substages:
        n_seq = min(sub.n_sequences, (inst.stream_len - start) // sub.seq_len)
        perm = np.random.Generator(np.random.PCG64(stage_seed(seed, stage.name, sub.name))).permutation(n_seq)
        out.chunks.append(ChunkPlan(sub, start, int(n_seq), perm))
        start += n_seq * sub.seq_len
    return out


def recipe_documents(corpus_dir: str, recipe: Recipe) -> dict[str, SubsetDocs]:
    """The kept documents of every subset ``recipe`` packs (:func:`kept_documents` under its decisions).

    Raises:
        ValueError: a subset with a positive proportion is absent or has no kept documents (the message says
            why: :func:`why_empty`).
        CorpusError: the recipe's attributes are missing or out of date.
    """
    corpus = Corpus(corpus_dir)
    for subset in recipe.subsets():
        if subset not in corpus.subsets():
            stage = next(st.name for st in recipe.stages if subset in st.proportions)
            raise InputError(f"stage {stage!r}: " + why_empty(corpus_dir, subset, recipe))
    docs = kept_documents(corpus_dir, recipe.subsets(), recipe)
    for stage in recipe.stages:
        for subset in stage.proportions:
            if not len(docs[subset].n_tokens):
                raise InputError(f"stage {stage.name!r}: " + why_empty(corpus_dir, subset, recipe))
    return docs


def plan_packing(recipe: Recipe, docs: dict[str, SubsetDocs]) -> PackPlan:
    """The :class:`PackPlan` of ``recipe`` over ``docs`` (:func:`recipe_documents`): a pure function of both."""
    rows = [{"stage": r.stage, "subset": r.subset, "documents": r.documents, "unique_tokens": r.unique_tokens,
             "effective_tokens": r.effective_tokens, "proportion": r.proportion, "epochs": round(r.epochs, 6)}
            for r in plan(recipe, subset_stats(docs))]
    langs = [{"stage": r.stage, "subset": r.subset, "language": r.language, "documents": r.documents,
              "unique_tokens": r.unique_tokens, "share": r.share, "effective_tokens": r.effective_tokens}
             for r in language_plan(recipe, docs)]
    return PackPlan(recipe.name, recipe_toml(recipe), recipe.seed, docs, rows, langs,
                    [_stage_plan(docs, stage, recipe.seed) for stage in recipe.stages])
