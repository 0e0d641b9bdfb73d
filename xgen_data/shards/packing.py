"""``xgen mix build``: pack the kept documents into shuffled fixed-length sequences (SPEC §2).

Planning (:func:`xgen_data.mixing.selection.plan_packing`) decides, per stage, seeded from the recipe seed:
which document instances each subset contributes (by sampling proportion), their uniformly shuffled stream
order, one chunk of ``n_sequences × seq_len`` tokens per sub-stage and each chunk's sequence permutation.
Packing (:func:`pack`) consumes that plan: the stage's stream is its instances' tokens, each document
followed by EOS (so EOS separates consecutive documents and is never doubled; long documents span sequences),
cut into the chunks, whose sequences go in the plan's order to shards (:mod:`xgen_data.shards.shard_format`).
It runs as two steps on the contract (:mod:`xgen_data.shards.pack_step`): the used documents' tokens staged
per part, then the shard files per group, each item a pure function of the plan and the staged files.

Staged tokens live in temporary memory-mapped files, so memory holds only per-document integers
(document offsets, instance order, permutations) and the pieces of one chunk, never the tokens of the
corpus. The output folder is
built under a temporary name and swapped in at the end by the shared folder publisher
(:class:`xgen_data.store.publish.FolderPublisher`: locked, foreign files refused, the previous set restored if
a crash interrupted the swap); the same corpus, recipe and seed give byte-identical shards. The
manifest records the recipe: name, SHA-256 and full TOML text.
"""
from __future__ import annotations

import os
import shutil

from tqdm.auto import tqdm

from xgen_data.errors import InputError, ProblemFound, RefusedError
from xgen_data.execute import executors
from xgen_data.execute.contract import Executor, run_step
from xgen_data.execute.local import LocalExecutor
from xgen_data.mixing import pipeline, selection
from xgen_data.mixing.recipe import Recipe
from xgen_data.shards import shard_format as shards
from xgen_data.shards.pack_step import BuildReport, PackStep, StageTokensStep
from xgen_data.store import locks, publish
from xgen_data.store.corpus import Corpus

SHARD_TOKENS = 1 << 25  # target tokens per shard file (64 MiB of uint16)


resolve_out_dir = publish.resolve_out_dir  # one behaviour for every published folder: a link's target is written


def check_out_dir(out_dir: str, corpus: Corpus) -> str:
    """The absolute output path with symbolic links resolved (a link named by ``--out`` is not replaced: the
    folder it points to is built and registered), if it is safe to (re)create as a shards directory.

    Raises:
        RefusedError: ``out_dir`` is the corpus, inside it or contains it, or a filesystem root (the publisher's
            :func:`xgen_data.store.publish.check_out`, the corpus being the build's input), or an existing
            non-empty folder that is not a shards directory or holds files its manifest does not list (xgen
            never deletes what it did not write).
        InputError: ``out_dir`` is a file.
    """
    out = publish.check_out(out_dir, inputs=[corpus.root])
    if os.path.exists(out) and not os.path.isdir(out):
        raise InputError(f"{out_dir}: exists and is not a directory")
    foreign = publish.foreign_files(out, _listed_files)
    if foreign is None:
        raise RefusedError(f"{out_dir}: folder exists, is not empty and is not a shards directory "
                           "(no valid manifest.json); choose another --out or empty it")
    if foreign:
        raise RefusedError(f"{out_dir}: holds files that its manifest does not list ({', '.join(foreign[:3])}"
                           f"{', …' if len(foreign) > 3 else ''}); a rebuild replaces the whole folder, so move "
                           "them away or choose another --out")
    if not os.path.isdir(os.path.dirname(out)):
        raise InputError(f"{out_dir}: parent folder {os.path.dirname(out)} does not exist")
    return out


def check_disk_space(recipe: Recipe, folder: str) -> None:
    """Refuse a build whose streams and shards (2 bytes a token, twice) cannot fit on the disk of ``folder``.

    Raises:
        ValueError: naming the bytes needed and free, e.g. ``xgen_data/recipes/xgen-7b.toml`` (1.6T tokens) on a laptop.
    """
    needed = 4 * max(st.tokens for st in recipe.stages) + 2 * sum(st.tokens for st in recipe.stages)
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise ProblemFound(f"recipe {recipe.name!r} packs {sum(st.tokens for st in recipe.stages):,} tokens: about "
                           f"{needed / 1e9:,.1f} GB of temporary stream and shards, but {folder} has {free / 1e9:,.1f} GB "
                           "free")


def _is_complete_set(folder: str) -> bool:
    """Whether ``folder`` holds a shards set whose manifest reads (a backup worth restoring)."""
    try:
        shards.read_manifest(folder)
    except shards.ShardError:
        return False
    return True


def _listed_files(folder: str) -> set[str] | None:
    """The files a shards folder's manifest names (manifest, shards, indexes); None: not a shards folder.

    Not the manifest's self-checksum: a set whose manifest was edited is what a rebuild repairs; the listed
    files only decide that nothing foreign is in the folder the rebuild replaces."""
    try:
        manifest = shards.read_manifest(folder, check_sha256=False)
    except shards.ShardError:
        return None
    return {"manifest.json"} | {e[k] for e in manifest["shards"] for k in ("path", "index_path") if e.get(k)}


def publisher(out_dir: str, inputs: "list[str] | tuple[str, ...]" = ()) -> publish.FolderPublisher:
    """The :class:`~xgen_data.store.publish.FolderPublisher` of a shards folder (commit points ``build.*``);
    ``inputs``: the corpus it is built from (the output may not be, be inside or contain it)."""
    return publish.FolderPublisher(out_dir, listed_files=_listed_files, is_complete=_is_complete_set,
                                   what="shards", crash_prefix="build", inputs=inputs)


def recover_out_dir(out_dir: str) -> str | None:
    """Put back a complete shards set at ``out_dir`` after a killed rebuild, then remove the build's leftovers
    (:func:`xgen_data.store.publish.recover`), holding the folder's writer lock. Returns a note saying what was restored, or None."""
    with locks.writer_lock(publish.lock_path(out_dir), f"shards folder {out_dir}"):
        return publish.recover(out_dir, _is_complete_set, "shards")


def build(corpus_dir: str, recipe: Recipe, out_dir: str, shard_tokens: int = SHARD_TOKENS,
          progress: bool = True, executor: Executor | str | None = None, workers: int = 1,
          ray_address: str | None = None) -> BuildReport:
    """Plan (:func:`xgen_data.mixing.selection.plan_packing`), then pack the plan into shards (see module
    docstring), under the corpus lock: no other command may rewrite decisions while they are packed.

    Args:
        corpus_dir: a corpus whose recipe attributes are current (the recipe flow computes them).
        out_dir: the shards directory to (re)create.
        shard_tokens: target tokens per shard file (a shard holds whole sequences).
        executor: runs the packing items: an executor, or a name for
            :func:`xgen_data.execute.executors.make_executor` (default ``"local"`` with ``workers`` processes;
            ``"ray"``: a local Ray of ``workers`` CPUs or the cluster at ``ray_address``). Same shards on all.
    Raises:
        ValueError: a subset with a positive proportion has no kept documents.
        RefusedError: an unsafe ``out_dir`` (:func:`check_out_dir`), or another process writing it.
        CorpusError: not a corpus.
    """
    corpus = Corpus(corpus_dir)
    with corpus.lock():
        out_dir = resolve_out_dir(out_dir)
        # locked; a killed earlier swap is restored first, even if this build fails
        with publisher(out_dir, inputs=[corpus.root]) as pub:
            docs = selection.recipe_documents(corpus_dir, recipe)
            corpus.verify_parts()  # the tokens packed below come from these parts
            out_dir = check_out_dir(out_dir, corpus)
            check_disk_space(recipe, os.path.dirname(out_dir))
            plan = selection.plan_packing(recipe, docs)
            own = executor is None or isinstance(executor, str)
            runner = executors.make_executor(executor or "local", workers, ray_address) if own else executor
            try:
                return pack(corpus, plan, pub, shard_tokens, progress, runner)
            finally:
                if own:
                    runner.close()


def build_recipe(corpus_dir: str, recipe: Recipe, out_dir: str, workers: int = 2, progress: bool = True,
                 executor: str = "local", ray_address: str | None = None):
    """The recipe flow (:func:`xgen_data.mixing.pipeline.apply_recipe_steps`; ``executor`` / ``ray_address`` say
    where dedup's items run), then :func:`build` on the same executor (with ``"ray"``: one Ray for both), under
    one corpus lock (no other command can change the attributes between the check and the packing). Returns
    ``(StepsReport, BuildReport)``."""
    corpus = Corpus(corpus_dir)
    check_out_dir(out_dir, corpus)  # fail before any step runs
    with corpus.lock(), executors.command_executor(executor, workers, ray_address) as runner:  # one Ray for both
        address = ray_address if isinstance(runner, str) else None
        steps = pipeline.apply_recipe_steps(corpus_dir, recipe, workers, progress, executor=runner,
                                            ray_address=address)
        return steps, build(corpus_dir, recipe, out_dir, progress=progress, executor=runner, workers=workers,
                            ray_address=address)


def pack(corpus: Corpus, plan: selection.PackPlan, pub: publish.FolderPublisher, shard_tokens: int = SHARD_TOKENS,
         progress: bool = True, executor: Executor | None = None) -> BuildReport:
    """Run the packing steps of ``plan`` on ``executor`` (default: this process): :class:`StageTokensStep`, then
    :class:`PackStep`, which publishes through ``pub`` (entered; it removes the temporary folder unless
    committed). Call under the corpus lock. Returns the build's report, both steps' reports in ``steps``.

    Raises:
        ItemError: naming the part or shard files that failed (nothing is swapped in).
    """
    runner = executor if executor is not None else LocalExecutor(workers=1)
    tmp_dir = pub.begin()
    work = os.path.join(tmp_dir, ".work")
    os.makedirs(work)
    tokens = StageTokensStep(corpus, plan, work)
    step = PackStep(corpus, plan, pub, tmp_dir, tokens.staged, shard_tokens)
    with tqdm(unit="item", desc="mix build", disable=None if progress else True, leave=False) as bar:
        tokens_report = run_step(tokens, runner, lambda r: bar.update(1))
        report = run_step(step, runner, lambda r: bar.update(1))
    report.steps.insert(0, tokens_report)
    return report
