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
    (tmp_path / ".exp.tmp-k2j4h1x0").mkdir()  # an older version's leftover (mkdtemp name)
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
