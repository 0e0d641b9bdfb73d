"""Evaluation and reporting: SPEC §6 carbon figures, pass@k, perplexity by position."""
from __future__ import annotations

import csv
import hashlib
import json
import math
from fractions import Fraction

import numpy as np
import pytest
from click.testing import CliRunner
from hf_helpers import MICRO, make_run, perturbed_params

from cli.main import cli
from xgen_data.mixing import defaults
from xgen_train.evaluate import evaluation as ev

# ------------------------------------------------------------------------------------------------ carbon


def test_carbon_spec_figures():
    est = ev.carbon()  # SPEC §6 defaults
    assert est.kwh == pytest.approx(270_336 * 0.192 * 1.10, rel=1e-12)
    assert round(est.mwh, 1) == 57.1 and round(est.tco2eq, 1) == 4.5
    assert est.tco2eq == pytest.approx(57.09496 * 0.079, rel=1e-6)
    other = ev.carbon(device_hours=1000, watts=400, pue=1.5, kg_per_kwh=0.5)
    assert (other.kwh, other.mwh, other.tco2eq) == pytest.approx((600.0, 0.6, 0.3))
    for kwargs in (dict(pue=0.9), dict(watts=-1.0), dict(device_hours=float("nan"))):
        with pytest.raises(ValueError):
            ev.carbon(**kwargs)


def test_carbon_cli():
    res = CliRunner().invoke(cli, ["carbon", "--device-hours", "270336", "--watts", "192", "--pue", "1.10",
                                   "--kg-per-kwh", "0.079"])
    assert res.exit_code == 0, res.output
    assert "57.1 MWh" in res.output and "4.51 tCO2eq" in res.output
    res = CliRunner().invoke(cli, ["carbon", "--format", "json"])
    assert round(json.loads(res.output)["mwh"], 1) == 57.1
    res = CliRunner().invoke(cli, ["carbon", "--pue", "0.5"])  # a usage error, as every option out of range
    assert res.exit_code == 2 and "0.5 is not in the range x>=1" in res.output and "Traceback" not in res.output
    assert "[default: 1.1; x>=1]" in " ".join(CliRunner().invoke(cli, ["carbon", "--help"]).output.split())
    # a small run: 0.02 h x 65 W x 1.1 = 1.43 Wh, x 0.079 kg/kWh = 0.113 g; never "0 kWh ... 0.00 tCO2eq"
    res = CliRunner().invoke(cli, ["carbon", "--device-hours", "0.02", "--watts", "65"])
    assert res.exit_code == 0 and "= 1.43 Wh" in res.output and "= 0.113 gCO2eq" in res.output, res.output
    assert ev.energy_text(2500.0) == "2.5 MWh" and ev.emissions_text(12.3456) == "12.3 kgCO2eq"


# ------------------------------------------------------------------------------------------------ pass@k

def _exact(n: int, c: int, k: int) -> Fraction:
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


def test_pass_at_k_hand_values_and_edges():
    assert ev.pass_at_k(5, 2, 1) == pytest.approx(0.4)  # c / n
    assert ev.pass_at_k(5, 2, 2) == pytest.approx(0.7)  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert ev.pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)  # C(7,5)=21, C(10,5)=252
    assert ev.pass_at_k(10, 0, 3) == 0.0
    assert ev.pass_at_k(3, 2, 2) == 1.0  # n - c = 1 < k: every draw holds a correct sample
    assert ev.pass_at_k(200, 200, 100) == 1.0
    with pytest.raises(ev.PassAtKError, match="exceeds"):
        ev.pass_at_k(5, 1, 6)
    for bad in ((0, 0, 1), (5, 6, 1), (5, -1, 1), (5, 1, 0)):
        with pytest.raises(ev.PassAtKError):
            ev.pass_at_k(*bad)


def test_pass_at_k_matches_exact_binomials_where_they_overflow_floats():
    # SPEC §6 uses n = 200 samples; C(200, 100) ~ 9e58 is exact as a Fraction, the product form is stable
    for n, c, k in [(200, 1, 1), (200, 7, 10), (200, 37, 100), (200, 150, 100), (1000, 3, 500), (20, 10, 10)]:
        assert ev.pass_at_k(n, c, k) == pytest.approx(float(_exact(n, c, k)), rel=1e-12, abs=1e-15)


def test_pass_at_k_files_and_cli(tmp_path):
    jl = tmp_path / "counts.jsonl"
    jl.write_text('{"task_id": "HumanEval/0", "n": 5, "c": 2}\n\n{"task_id": "HumanEval/1", "n": 5, "c": 0}\n')
    rows = ev.read_counts(jl)
    assert rows == [("HumanEval/0", 5, 2), ("HumanEval/1", 5, 0)]
    table = ev.pass_at_k_table(rows, [1, 2, 5])
    assert table == pytest.approx({1: 0.2, 2: 0.35, 5: 0.5})
    cv = tmp_path / "counts.csv"
    cv.write_text("problem,n,c\np0,5,2\np1,5,0\n")
    assert ev.read_counts(cv) == [("p0", 5, 2), ("p1", 5, 0)]
    res = CliRunner().invoke(cli, ["eval", "pass-at-k", str(jl), "-k", "1,2", "--format", "json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["pass_at_k"] == pytest.approx({"1": 0.2, "2": 0.35})
    res = CliRunner().invoke(cli, ["eval", "pass-at-k", str(jl), "-k", "1,2", "--format", "csv"])
    lines = res.output.splitlines()
    assert lines[0] == "k,pass@k" and lines[1].startswith("1,0.") and float(lines[1][2:]) == pytest.approx(0.2)
    res = CliRunner().invoke(cli, ["eval", "pass-at-k", str(cv), "-k", "1,6"])
    assert res.exit_code == 3 and "k=6 exceeds the n=5 samples of problem 'p0'" in res.output
    assert "Traceback" not in res.output
    res = CliRunner().invoke(cli, ["eval", "pass-at-k", str(jl), "--format", "json"])  # default k: 1, 10, 100 up to n
    assert res.exit_code == 0 and json.loads(res.stdout) == {
        "problems": 2, "pass_at_k": pytest.approx({"1": 0.2}),
        "inputs": [{"path": str(jl), "sha256": hashlib.sha256(jl.read_bytes()).hexdigest()}]}
    assert "k > 5 left out" in res.stderr


@pytest.mark.parametrize("content, message", [
    ('{"n": 5, "c": 2}\n{"n": 5}\n', ":2: key 'c' missing"),
    ('{"n": 5, "c": 2}\nnot json\n', ":2: not valid JSON"),
    ('{"n": 5, "c": 7}\n', ":1: need n >= 1 and 0 <= c <= n"),
    ('{"n": 5.5, "c": 1}\n', ":1: 'n' must be an integer"),
    ('[1, 2]\n', ":1: expected a JSON object"),
    ("\n", "no problems found"),
])
def test_pass_at_k_bad_files_name_the_line(tmp_path, content, message):
    f = tmp_path / "bad.jsonl"
    f.write_text(content)
    with pytest.raises(ev.PassAtKError, match=message):
        ev.read_counts(f)
    c = tmp_path / "bad.csv"
    c.write_text("n,c\n5,x\n")
    with pytest.raises(ev.PassAtKError, match=r"bad.csv:2: 'c' must be an integer"):
        ev.read_counts(c)


# ------------------------------------------------------------------------------------ perplexity by position

@pytest.fixture(scope="module")
def params():
    return perturbed_params(MICRO, seed=3)


def test_long_documents_are_kept_ones_cut_to_n(sample_corpus):
    from xgen_data.stats import sql

    con = sql.connect(sample_corpus)
    n_long = con.execute("SELECT count(*) FROM documents WHERE kept AND n_tokens >= 200").fetchone()[0]
    assert n_long > 5
    docs = ev.long_documents(sample_corpus, 200)
    assert len(docs) == n_long and all(d.shape == (200,) and d.dtype == np.int32 for d in docs)
    few = ev.long_documents(sample_corpus, 200, max_docs=3)
    assert len(few) == 3 and all(np.array_equal(a, b) for a, b in zip(few, docs))
    # the first 200 tokens of the first such document, read independently
    first_id = con.execute("SELECT id FROM documents WHERE kept AND n_tokens >= 200 ORDER BY subset, part, row "
                           "LIMIT 1").fetchone()[0]
    text = con.execute("SELECT text FROM documents WHERE id = ?", [first_id]).fetchone()[0]
    from xgen_data import tokenizer

    assert docs[0].tolist() == tokenizer.encode(text)[:200]
    with pytest.raises(ValueError, match=r"no subset 'nope'"):
        ev.long_documents(sample_corpus, 200, subsets=["nope"])


def test_long_documents_skip_dropped_ones(corpus_copy):
    """Documents a filter dropped (here: every license but MIT, in every subset) are not evaluated."""
    from xgen_data import tokenizer
    from xgen_data.stats import sql

    defaults.run_filters(corpus_copy, license_subsets=("natural", "code", "instruct"), allow=("MIT",))
    con = sql.connect(corpus_copy)
    kept = [t for (t,) in con.execute("SELECT text FROM documents WHERE kept AND n_tokens >= 150 "
                                      "ORDER BY subset, part, row").fetchall()]
    dropped = con.execute("SELECT count(*) FROM documents WHERE NOT kept AND n_tokens >= 150").fetchone()[0]
    assert kept and dropped > 0
    docs = ev.long_documents(corpus_copy, 150)
    assert [d.tolist() for d in docs] == [tokenizer.encode(t)[:150] for t in kept]


def test_no_long_document_is_a_clear_error(sample_corpus):
    from xgen_data.stats import sql

    longest = sql.connect(sample_corpus).execute("SELECT max(n_tokens) FROM documents WHERE kept").fetchone()[0]
    with pytest.raises(ValueError, match=rf"no kept document has at least {longest + 1:,} tokens .* the longest "
                                         rf"has {longest:,} tokens"):
        ev.long_documents(sample_corpus, longest + 1)


def test_ppl_by_position_matches_a_direct_computation(params, sample_corpus):
    import jax.numpy as jnp

    from xgen_train.model.model import build_model

    docs = ev.long_documents(sample_corpus, 96, max_docs=5)
    res = ev.ppl_by_position(params, MICRO, docs, batch_size=2)  # 5 docs: the last batch is padded
    assert res.n_docs == 5 and res.positions.tolist() == list(range(1, 96))
    logits = np.asarray(build_model(MICRO).apply(params, jnp.asarray(np.stack(docs))), np.float64)
    top = logits.max(-1, keepdims=True)
    logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))  # float64 log-softmax
    want = np.array([np.mean([-logp[d, p - 1, docs[d][p]] for d in range(5)]) for p in range(1, 96)])
    np.testing.assert_allclose(res.mean_nll, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(res.ppl, np.exp(want), rtol=1e-4)
    buckets = ev.position_buckets(res)
    assert [(lo, hi) for lo, hi, _, _ in buckets] == [(1, 1), (2, 3), (4, 7), (8, 15), (16, 31), (32, 63), (64, 95)]
    assert buckets[-1][2] == pytest.approx(float(want[63:95].mean()))


def test_ppl_by_position_cli(params, sample_corpus, tmp_path):
    run = make_run(tmp_path / "run", MICRO, params)  # run.json records seq_len 128: the default N
    res = CliRunner().invoke(cli, ["eval", "ppl-by-position", str(run), "--corpus", sample_corpus, "--max-docs", "3",
                                   "--quiet"])
    assert res.exit_code == 0, res.output
    assert "3 documents of >= 128 tokens" in res.output
    with open(run / "eval" / "ppl_by_position.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 127 and rows[0]["position"] == "1" and rows[-1]["position"] == "127"
    assert all(r["n"] == "3" for r in rows)
    assert math.exp(float(rows[5]["mean_nll"])) == pytest.approx(float(rows[5]["ppl"]), rel=1e-4)
    assert (run / "eval" / "ppl_by_position.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "eval" / "ppl_by_position_buckets.csv").read_text().startswith("first,last,n,mean_nll,ppl\n")
    res = CliRunner().invoke(cli, ["eval", "ppl-by-position", str(run), "--corpus", sample_corpus,
                                   "--length", "257"])
    assert res.exit_code == 2 and "exceeds the model's max positions 256" in res.output
    assert ev.trained_seq_len(run) == 128


@pytest.mark.slow  # > 7 s on 2 cores
def test_ppl_by_position_says_which_documents_the_run_trained_on(params, sample_corpus, demo_shards, tmp_path):
    run = make_run(tmp_path / "run", MICRO, params)
    meta = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**meta, "shards_dir": demo_shards}))
    trained = ev.training_documents(demo_shards)
    args = ["eval", "ppl-by-position", str(run), "--corpus", sample_corpus, "--max-docs", "4", "--length", "64",
            "--quiet", "--format", "json"]
    res = CliRunner().invoke(cli, args)
    doc = json.loads(res.stdout)
    keys = ev.long_document_keys(sample_corpus, 64, 4, recipe=ev.run_recipe(run))
    assert doc["trained_on"] == sum((k[0], k[3]) in trained for k in keys) > 0, res.output
    assert doc["held_out"] == 4 - doc["trained_on"]
    res = CliRunner().invoke(cli, args + ["--held-out"])
    doc = json.loads(res.stdout)
    assert res.exit_code == 0 and doc["trained_on"] == 0 and doc["held_out"] == doc["documents"] > 0, res.output
    held = ev.long_document_keys(sample_corpus, 64, 4, recipe=ev.run_recipe(run), exclude=trained)
    assert not {(k[0], k[3]) for k in held} & trained
    (run / "run.json").write_text(json.dumps(meta))  # no shards recorded: --held-out cannot be honoured
    res = CliRunner().invoke(cli, args + ["--held-out"])
    assert res.exit_code == 3 and "--held-out needs the shards folder" in res.output, res.output
