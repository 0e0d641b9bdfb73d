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
