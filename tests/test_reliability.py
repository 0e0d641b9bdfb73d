"""Reliability (no silent loss, no runaway query, no run that lies about itself): one test per case.

Ingest hashes what it reads; special files are refused or skipped; ...
"""
import hashlib
import json
import os

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from cli.main import cli
from xgen_data.sources import readers
from xgen_data.store import duckdb_settings
from xgen_data.store.corpus import Corpus


def _invoke(args):
    """Invoke the CLI; an exception other than click's own exit would be a traceback for the user."""
    res = CliRunner().invoke(cli, args)
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    return res


def _jsonl(path, texts, tag):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"id": f"{tag}-{i}", "text": t}) + "\n" for i, t in enumerate(texts)),
                    encoding="utf-8")
    return path


def _stored_texts(root):
    corpus = Corpus(str(root))
    return sorted(t for p in corpus.parts() for t in pq.read_table(p.path, columns=["text"]).column("text").to_pylist())


# -- ingest: what is read is what is hashed ------------------------------------------------------------------

def test_ingest_file_replaced_after_hashing_keeps_the_hashed_bytes(tmp_path, monkeypatch):
    src = _jsonl(tmp_path / "raw" / "code.jsonl", [f"old document {i}" for i in range(5)], "old")
    old_sha = hashlib.sha256(src.read_bytes()).hexdigest()
    new = _jsonl(tmp_path / "new.jsonl", [f"new document {i}" for i in range(5)], "new")
    real = readers.iter_raw

    def replaced_then_read(path, *a, **k):  # a producer's atomic rename between the hash and the read
        os.replace(new, src)
        return real(path, *a, **k)

    monkeypatch.setattr(readers, "iter_raw", replaced_then_read)
    res = _invoke(["ingest", "--corpus", str(tmp_path / "c"), "--quiet", "--workers", "1", str(src)])
    assert res.exit_code == 0, res.output
    (entry,) = Corpus(str(tmp_path / "c")).read_meta()["inputs"].values()
    assert entry["sha256"] == old_sha
    assert _stored_texts(tmp_path / "c") == sorted(f"old document {i}" for i in range(5))


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_ingest_file_changed_in_place_during_the_read_is_an_error_naming_it(tmp_path, monkeypatch, fmt):
    src = _jsonl(tmp_path / "raw" / "code.jsonl", [f"document {i}" for i in range(5)], "d")
    if fmt == "parquet":
        import pyarrow as pa

        pq.write_table(pa.table({"id": [f"d-{i}" for i in range(5)], "text": [f"document {i}" for i in range(5)]}),
                       tmp_path / "raw" / "code.parquet")
        src = tmp_path / "raw" / "code.parquet"
    real = readers.iter_raw

    def appended_while_read(path, *a, **k):
        for i, rec in enumerate(real(path, *a, **k)):
            yield rec
            if i == 0:
                with open(src, "ab") as f:  # a producer still writing the file
                    f.write(b'{"id": "late", "text": "appended"}\n')

    monkeypatch.setattr(readers, "iter_raw", appended_while_read)
    res = _invoke(["ingest", "--corpus", str(tmp_path / "c"), "--quiet", "--workers", "1", str(src)])
    assert res.exit_code == 3, res.output
    assert str(src) in res.output and "changed while it was being ingested" in res.output
    assert not Corpus(str(tmp_path / "c")).read_meta().get("inputs")


def test_ingest_refuses_a_fifo_given_as_input_naming_its_kind(tmp_path):
    fifo = tmp_path / "code.jsonl"
    os.mkfifo(fifo)
    res = _invoke(["ingest", "--corpus", str(tmp_path / "c"), "--quiet", str(fifo)])
    assert res.exit_code == 3, res.output
    assert f"{fifo}: is a FIFO" in res.output and "no such input file" not in res.output


def test_ingest_skips_and_lists_a_fifo_inside_a_folder(tmp_path):
    raw = tmp_path / "raw"
    _jsonl(raw / "code.jsonl", [f"document {i}" for i in range(3)], "d")
    os.mkfifo(raw / "pipe.jsonl")
    res = _invoke(["ingest", "--corpus", str(tmp_path / "c"), "--quiet", "--subset", "code", str(raw)])
    assert res.exit_code == 0, res.output
    assert "special file (FIFO (named pipe)): " in res.output and "pipe.jsonl" in res.output
    assert _stored_texts(tmp_path / "c") == [f"document {i}" for i in range(3)]


# -- export: one write-and-swap helper ------------------------------------------------------------------------

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: A micro model: the export kill tests run a subprocess each, so it must be quick to build.
EXPORT = """
import sys
from xgen_train.export import hf
from xgen_train.model.config import ModelConfig
from xgen_train.model.model import init_params
cfg = ModelConfig(vocab_size=512, hidden=32, intermediate=64, n_layers=1, n_heads=2, max_positions=64)
hf.export_hf(None, sys.argv[1], params=init_params(cfg, int(sys.argv[2])), model_config=cfg, tokenizer=False)
"""


def _export_here(out, seed):
    from xgen_train.export import hf
    from xgen_train.model.config import ModelConfig
    from xgen_train.model.model import init_params

    cfg = ModelConfig(vocab_size=512, hidden=32, intermediate=64, n_layers=1, n_heads=2, max_positions=64)
    return hf.export_hf(None, str(out), params=init_params(cfg, seed), model_config=cfg, tokenizer=False)


def _export_killed(out, seed, point):
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", XGEN_CRASH_AT=point)
    return subprocess.run([sys.executable, "-c", EXPORT, str(out), str(seed)], env=env, timeout=300,
                          capture_output=True, text=True)


def _weights(folder):
    return (folder / "model.safetensors").read_bytes()


def _siblings(out):
    return sorted(n for n in os.listdir(out.parent) if n != out.name)


def test_export_into_an_earlier_export_keeps_the_users_files(tmp_path):
    from xgen_data.errors import RefusedError

    out = tmp_path / "exp"
    _export_here(out, 1)
    (out / "README.md").write_text("my notes")
    (out / "adapter").mkdir()
    (out / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(RefusedError, match="README.md"):
        _export_here(out, 2)
    assert (out / "README.md").read_text() == "my notes" and (out / "adapter" / "adapter_config.json").exists()
    assert _siblings(out) == []


@pytest.mark.parametrize("point", ["export.before_swap", "export.after_backup", "export.after_swap"])
@pytest.mark.slow  # > 7 s on 2 cores
def test_killed_export_leaves_a_complete_or_restorable_export(tmp_path, point):
    out = tmp_path / "exp"
    _export_here(out, 1)
    old = _weights(out)
    proc = _export_killed(out, 2, point)
    assert proc.returncode == -9, proc.stderr
    # the invariant: a complete export in place, or (between the two renames) the old one in the backup
    if point == "export.after_backup":
        assert not out.exists() and _weights(tmp_path / ".exp.backup") == old
    elif point == "export.before_swap":
        assert _weights(out) == old and any(n.startswith(".exp.tmp-") for n in _siblings(out))
    else:
        assert _weights(out) != old
    (tmp_path / ".exp.tmp-k2j4h1x0").mkdir()  # a temporary folder no live writer owns (its suffix is not a PID)
    _export_here(out, 3)  # the next export restores or cleans up first, then replaces it
    assert _weights(out) not in (old, b"") and _siblings(out) == []


def test_export_under_a_path_that_is_a_file_names_it(tmp_path):
    (tmp_path / "plain").write_text("x")
    run = tmp_path / "run"
    run.mkdir()
    res = _invoke(["export", "hf", str(run), "--out", str(tmp_path / "plain" / "exp")])
    assert res.exit_code == 3, res.output
    assert f"{tmp_path / 'plain'} is a file" in res.output and "Errno" not in res.output


def test_second_writer_of_a_folder_is_refused_naming_the_holder(tmp_path):
    import socket

    from xgen_data.errors import RefusedError
    from xgen_data.store import locks, publish

    out = tmp_path / "exp"
    with locks.writer_lock(publish.lock_path(str(out)), "test"):
        with pytest.raises(RefusedError, match=f"pid {os.getpid()} on {socket.gethostname()}"):
            _export_here(out, 1)
    assert not out.exists() and _siblings(out) == []


# -- sql: a runaway query can be stopped ---------------------------------------------------------------------

RUNAWAY = "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t) SELECT count(*) FROM t"


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    from xgen_data.sources import ingest

    root = tmp_path_factory.mktemp("tiny")
    src = _jsonl(root / "raw" / "nl.jsonl", ["hello world", "another document"], "t")
    ingest.ingest(str(root / "c"), [(str(src), None)], workers=1, progress=False)
    return str(root / "c")


def test_spill_cap_stops_a_query_that_would_exceed_it(tiny_corpus, monkeypatch):
    monkeypatch.setenv("XGEN_DUCKDB_SPILL", "20MB")
    monkeypatch.setenv("XGEN_DUCKDB_MEMORY", "32MB")
    res = _invoke(["sql", "--corpus", tiny_corpus, "SELECT max(x) FROM (SELECT i, row_number() OVER "
                   "(ORDER BY hash(i)) x, repeat('y', 20) || i s FROM range(3000000) t(i))"])
    assert res.exit_code == 1, res.output
    assert "over the cap of 20 MB" in res.output and "XGEN_DUCKDB_SPILL" in res.output


def test_default_spill_cap_cannot_fill_the_disk(tmp_path, monkeypatch):
    import shutil


    monkeypatch.delenv("XGEN_DUCKDB_SPILL", raising=False)
    cap = duckdb_settings.spill_cap(str(tmp_path / "not-yet"))
    assert 0 < cap <= shutil.disk_usage(tmp_path).free * 0.5 + 1e9 and cap <= duckdb_settings.size_bytes("20GB")
    assert duckdb_settings.duckdb_config(str(tmp_path))["max_temp_directory_size"] == f"{duckdb_settings.spill_cap(str(tmp_path))}B"


def test_sigint_stops_a_runaway_query_within_seconds(tiny_corpus):
    import signal
    import subprocess
    import sys
    import time

    env = dict(os.environ, PYTHONPATH=REPO, XGEN_DUCKDB_MEMORY="64MB")
    proc = subprocess.Popen([sys.executable, "-m", "cli", "sql", "--corpus", tiny_corpus, RUNAWAY], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stderr.readline()  # printed just before the views are built and the query runs
        assert first.startswith("decisions:"), first
        time.sleep(2)  # inside the query
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        t0 = time.time()
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert time.time() - t0 < 10 and "interrupted by SIGINT" in err and "Traceback" not in err


def test_timeout_stops_a_runaway_query(tiny_corpus, monkeypatch):
    monkeypatch.setenv("XGEN_DUCKDB_MEMORY", "64MB")
    res = _invoke(["sql", "--corpus", tiny_corpus, "--timeout", "1", RUNAWAY])
    assert res.exit_code == 1 and "stopped after --timeout 1 s" in res.output, res.output


def test_table_output_caps_rows_with_a_notice(tiny_corpus):
    res = _invoke(["sql", "--corpus", tiny_corpus, "--max-rows", "100", "SELECT * FROM range(10000000)"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert sum(1 for x in lines if x.strip().replace(",", "").isdigit()) == 100
    assert "only the first 100 rows are shown" in res.output


# -- train: a run folder has one writer; a run that does not learn fails -------------------------------------

@pytest.fixture(scope="module")
def train_shards(tmp_path_factory):
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from conftest_train import build_shards

    return build_shards(tmp_path_factory.mktemp("tr") / "shards", seq_len=64, max_tokens=12_000)


TRAIN_KW = dict(steps=2, batch_size=4, lr=3e-3, warmup=1, progress=False, plot=False)


def test_second_training_run_on_one_folder_is_refused_naming_the_holder(train_shards, tmp_path):
    import socket

    from xgen_data.errors import RefusedError
    from xgen_data.store import locks
    from xgen_train.loop.trainer import train

    out = tmp_path / "run"
    out.mkdir()
    holder = f"pid {os.getpid()} on {socket.gethostname()}"
    with locks.writer_lock(str(out / ".lock"), "a first run"):
        with pytest.raises(RefusedError, match=holder):
            train(str(train_shards), str(out), **TRAIN_KW)
        res = _invoke(["train", "--shards", str(train_shards), "--out", str(out), "--steps", "1", "--batch-size",
                       "4", "--warmup", "1", "--quiet"])
        assert res.exit_code == 2 and holder in res.output and "Traceback" not in res.output, res.output
        assert sorted(os.listdir(out)) == [".lock"]  # nothing written, no metrics, no orbax temp folder
    assert sorted(os.listdir(out)) == []


@pytest.mark.parametrize("option,value", [("--z-loss", "nan"), ("--lr", "inf"), ("--budget-fraction", "nan"),
                                          ("--peak-flops", "nan")])
def test_non_finite_numeric_options_are_refused(train_shards, tmp_path, option, value):
    res = _invoke(["train", "--shards", str(train_shards), "--out", str(tmp_path / "r"), option, value])
    assert res.exit_code == 2 and "not a finite number" in res.output, res.output
    assert not (tmp_path / "r").exists()


@pytest.mark.slow  # > 7 s on 2 cores
def test_run_whose_updates_are_all_skipped_stops_with_a_clear_error(train_shards, tmp_path, monkeypatch):
    import jax.numpy as jnp

    from xgen_data.errors import ProblemFound
    from xgen_train.loop import trainer

    real = trainer._make_numerics_loss

    def nan_objective(cfg, num):  # what `--z-loss nan` did: a finite loss, a NaN objective, every update skipped
        fn = real(cfg, num)

        def loss_fn(params, tokens):
            obj, aux = fn(params, tokens)
            return obj * jnp.nan, aux
        return loss_fn

    monkeypatch.setattr(trainer, "_make_numerics_loss", nan_objective)
    with pytest.raises(ProblemFound, match="3 consecutive updates were skipped"):
        trainer.train(str(train_shards), str(tmp_path / "run"), **{**TRAIN_KW, "steps": 6}, max_skipped=3)
    assert not (tmp_path / "run" / "summary.json").exists()


def test_skip_guard_counts_consecutive_skips_only():
    from xgen_data.errors import ProblemFound
    from xgen_train.loop.guards import SkipGuard

    g = SkipGuard(3)
    for i, skipped in enumerate([True, True, False, True, True]):
        g.check({"step": i, "loss": 1.0, "skipped": skipped, "nonfinite": skipped})
    with pytest.raises(ProblemFound, match="non-finite gradients"):
        g.check({"step": 5, "loss": 1.0, "skipped": True, "nonfinite": True})
    with pytest.raises(ProblemFound, match="non-finite loss"):
        SkipGuard(3).check({"step": 0, "loss": float("nan"), "skipped": True, "nonfinite": True})


def test_disk_full_during_a_checkpoint_save_is_one_message_and_no_temp_folder(tmp_path, caplog):
    import logging

    import jax.numpy as jnp

    from xgen_data.errors import ProblemFound
    from xgen_train.loop.checkpoint import CheckpointStore, latest_checkpoint

    store = CheckpointStore(tmp_path / "ck", keep=3)
    store.save(1, {"w": jnp.zeros(3)}, {"m": jnp.zeros(2)}, {"a": 1})

    def full_disk(step, **kw):  # what orbax does on ENOSPC: a temp folder, logged tracebacks, a ValueError
        tmp = tmp_path / "ck" / f"step_{step:08d}.orbax-checkpoint-tmp" / "params"
        tmp.mkdir(parents=True)
        (tmp / "d").write_bytes(b"x" * 100)
        try:
            raise OSError(28, "No space left on device")
        except OSError:
            logging.getLogger("absl").exception("_SignalingThread.run() raised an exception")
        raise ValueError('RESOURCE_EXHAUSTED: Error writing "w/0.0": No space left on device')

    store._mgr.save = full_disk
    with caplog.at_level(logging.ERROR), pytest.raises(ProblemFound, match="disk full while saving checkpoint step 2"):
        store.save(2, {"w": jnp.ones(3)}, {"m": jnp.zeros(2)}, {"a": 2})
    assert not any("_SignalingThread" in r.getMessage() for r in caplog.records)
    assert sorted(os.listdir(tmp_path / "ck")) == ["step_00000001"]
    assert latest_checkpoint(tmp_path / "ck").name == "step_00000001"
    store.close()


@pytest.mark.slow  # > 6 s on 2 cores
def test_import_hint_of_an_unnamed_config_trains_as_printed(train_shards, tmp_path):
    import re
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from hf_helpers import MICRO, perturbed_params

    from xgen_train.export import hf

    hf.export_hf(None, str(tmp_path / "hf"), params=perturbed_params(MICRO, seed=1), model_config=MICRO,
                 tokenizer=False)
    res = _invoke(["import", "hf", str(tmp_path / "hf"), "--out", str(tmp_path / "imported")])
    assert res.exit_code == 0, res.output
    hint = re.search(r"train from it: (xgen train .*)", res.output).group(1)
    assert hint.endswith("--config init")
    args = hint.split()[2:]
    args[args.index("SHARDS")] = str(train_shards)
    args[args.index("NEW_RUN")] = str(tmp_path / "new")
    res = _invoke(["train", *args, "--steps", "1", "--batch-size", "4", "--warmup", "1", "--quiet"])
    assert res.exit_code == 0, res.output
    run = json.loads((tmp_path / "new" / "run.json").read_text())
    assert run["config_name"] == "init" and run["model_config"] == MICRO.to_dict()


# -- errors name their input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["counts.jsonl", "counts.csv"])
def test_pass_at_k_on_non_utf8_input_names_file_and_line(tmp_path, name):
    path = tmp_path / name
    head = b"task_id,n,c\n" if name.endswith(".csv") else b""
    good = b"a,5,1\n" if name.endswith(".csv") else b'{"task_id": "a", "n": 5, "c": 1}\n'
    bad = b"b\xff,5,1\n" if name.endswith(".csv") else b'{"task_id": "b\xff", "n": 5, "c": 1}\n'
    path.write_bytes(head + good + bad)
    res = _invoke(["eval", "pass-at-k", str(path), "-k", "1"])
    line = 3 if name.endswith(".csv") else 2
    assert res.exit_code == 3, res.output  # bad input (docs/cli.md)
    assert f"{path}:{line}: not UTF-8" in res.output and "Traceback" not in res.output


def test_pass_at_k_refuses_a_repeated_task_id_naming_both_lines(tmp_path):
    path = tmp_path / "counts.jsonl"
    rows = (("a", 1), ("b", 2), ("a", 1))
    path.write_text("".join(json.dumps({"task_id": t, "n": 5, "c": c}) + "\n" for t, c in rows))
    res = _invoke(["eval", "pass-at-k", str(path), "-k", "1"])
    assert res.exit_code == 3, res.output
    assert f"{path}:3: problem 'a' appears again (first at {path}:1)" in res.output


def test_a_killed_writer_leaves_no_lock_behind(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from xgen_data.errors import RefusedError
    from xgen_data.store import locks

    lock = tmp_path / "run" / ".lock"
    lock.parent.mkdir()
    code = ("import sys, time\nfrom xgen_data.store import locks\nwith locks.writer_lock(sys.argv[1], 'run'):\n"
            "    print('held', flush=True)\n    time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(lock)], env=dict(os.environ, PYTHONPATH=REPO),
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(RefusedError, match=f"pid {proc.pid} on"):
            with locks.writer_lock(str(lock), "run"):
                pass
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert lock.exists()  # the file stays, its flock went with the process
    with locks.writer_lock(str(lock), "run"):
        time.sleep(0)
    assert not lock.exists()
