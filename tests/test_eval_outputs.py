"""Evaluation output folders go through the shared folder publisher (locked, foreign files refused, crash-safe
swap, leftovers of killed runs removed), and every eval input is parsed from the bytes that are hashed."""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from cli.main import cli
from xgen_data.errors import DamagedDataError, RefusedError
from xgen_train.evaluate import evaluation as ev
from xgen_train.evaluate import humaneval as he
from xgen_train.evaluate import rouge
from xgen_train.evaluate.outputs import MANIFEST, check_writable, read_manifest, read_verified, write_folder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WRITE = """
import sys
from xgen_train.evaluate.outputs import write_folder
write_folder(sys.argv[1], "eval-rouge", {"rouge.json": sys.argv[2], "per_example.jsonl": sys.argv[2] * 3})
"""


def _write(out, text):
    return write_folder(out, "eval-rouge", {"rouge.json": text, "per_example.jsonl": text * 3})


def _write_killed(out, text, point):
    env = dict(os.environ, PYTHONPATH=REPO, XGEN_CRASH_AT=point)
    return subprocess.run([sys.executable, "-c", WRITE, str(out), text], env=env, timeout=120,
                          capture_output=True, text=True)


def _siblings(out):
    return sorted(n for n in os.listdir(out.parent) if n != out.name)


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- output folders: the shared publisher ----------------------------------------------------------------------

@pytest.mark.parametrize("point", ["eval.before_swap", "eval.after_backup", "eval.after_swap"])
def test_killed_write_leaves_a_complete_or_restorable_folder(tmp_path, point):
    out = tmp_path / "o"
    _write(out, "old")
    proc = _write_killed(out, "new", point)
    assert proc.returncode == -9, proc.stderr
    # the invariant: a complete folder in place, or (between the two renames) the old one in the backup
    if point == "eval.after_backup":
        assert not out.exists() and read_verified(tmp_path / ".o.backup", "rouge.json") == b"old"
    elif point == "eval.before_swap":
        assert read_verified(out, "rouge.json") == b"old" and any(n.startswith(".o.tmp-") for n in _siblings(out))
    else:
        assert read_verified(out, "per_example.jsonl") == b"newnewnew"
    (tmp_path / ".o.tmp-k2j4h1x0").mkdir()  # a temporary folder no live writer owns (its suffix is not a PID)
    _write(out, "third")  # the next write restores or cleans up first, then replaces it
    assert read_verified(out, "rouge.json") == b"third" and _siblings(out) == []


def test_killed_write_between_the_renames_is_restored_by_the_next_writer_even_if_it_fails(tmp_path):
    out = tmp_path / "o"
    _write(out, "old")
    assert _write_killed(out, "new", "eval.after_backup").returncode == -9
    with pytest.raises(TypeError):
        write_folder(out, "eval-rouge", {"rouge.json": 42})  # fails after the publisher restored the old folder
    assert read_verified(out, "rouge.json") == b"old" and _siblings(out) == []


def test_an_earlier_output_with_foreign_files_is_refused_and_kept(tmp_path):
    out = tmp_path / "o"
    _write(out, "old")
    (out / "notes.md").write_text("my notes")
    (out / "plots").mkdir()
    (out / "plots" / "a.png").write_bytes(b"png")
    for attempt in (lambda: check_writable(out, "eval-rouge"), lambda: _write(out, "new")):
        with pytest.raises(RefusedError, match=r"notes\.md, plots/a\.png"):
            attempt()
    assert (out / "notes.md").read_text() == "my notes" and (out / "plots" / "a.png").exists()
    assert read_verified(out, "rouge.json") == b"old" and _siblings(out) == []
    # another kind's folder and a plain folder are refused too; an empty folder is written
    (out / "notes.md").unlink()
    with pytest.raises(RefusedError, match="is not an earlier `eval-report` output"):
        write_folder(out, "eval-report", {"report.md": "x"})
    with pytest.raises(RefusedError, match="is not an earlier `eval-rouge` output"):
        _write(out / "plots", "new")
    (tmp_path / "empty").mkdir()
    _write(tmp_path / "empty", "new")
    assert read_verified(tmp_path / "empty", "rouge.json") == b"new"


def test_cli_report_into_a_folder_with_foreign_files_exits_refused(tmp_path):
    src = write_folder(tmp_path / "t", "eval-tasks", {"results.json": json.dumps(
        {"results": {"piqa": {"acc,none": 0.5}}, "n-shot": {"piqa": 0}, "n-samples": {"piqa": {"effective": 4}}})})
    args = ["eval", "report", str(src), "--out", str(tmp_path / "r"), "--format", "json"]
    assert CliRunner().invoke(cli, args).exit_code == 0
    (tmp_path / "r" / "draft.md").write_text("mine")
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 2 and "draft.md" in res.output, res.output
    assert (tmp_path / "r" / "draft.md").read_text() == "mine"


def test_second_writer_is_refused_naming_the_holder(tmp_path):
    import socket

    from xgen_data.store import locks, publish

    out = tmp_path / "o"
    with locks.writer_lock(publish.lock_path(str(out)), "test"):
        with pytest.raises(RefusedError, match=f"pid {os.getpid()} on {socket.gethostname()}"):
            _write(out, "new")
    assert not out.exists() and _siblings(out) == []


def test_manifest_records_inputs_and_read_verified_checks_the_files(tmp_path):
    out = tmp_path / "o"
    src = {"path": "p.jsonl", "sha256": "ab" * 32}
    write_folder(out, "eval-rouge", {"rouge.json": "{}"}, inputs=[src])
    man = read_manifest(out)
    assert man["inputs"] == [src] and man["kind"] == "eval-rouge"
    assert set(man["sha256"]) == {"rouge.json"} and set(os.listdir(out)) == {"rouge.json", MANIFEST}
    (out / "rouge.json").write_text("{ }")
    with pytest.raises(DamagedDataError, match="sha256 differs"):
        read_verified(out, "rouge.json")


# -- inputs: what is read is what is hashed --------------------------------------------------------------------

def _problem(tid):
    return {"task_id": tid, "prompt": "def f():\n", "canonical_solution": "    return 1\n",
            "test": "def check(f):\n    assert f() == 1\n", "entry_point": "f"}


READERS = {
    "rouge predictions": (rouge, lambda p: rouge.read_texts(p), "p.jsonl",
                          [b'{"text": "old one"}\n"old two"\n', b'"new"\n'], ["old one", "old two"]),
    "rouge txt": (rouge, lambda p: rouge.read_texts(p), "p.txt", [b"old a\r\nold b\n", b"new\n"], ["old a", "old b"]),
    "humaneval samples": (he, lambda p: he.read_samples(p, {"T/0": {}}), "s.jsonl",
                          [b'{"task_id": "T/0", "completion": "old"}\n', b'{"task_id": "T/0", "completion": "new"}\n'],
                          [{"task_id": "T/0", "completion": "old"}]),
    "humaneval problems": (he, he.load_problems, "problems.jsonl.gz",
                           [gzip.compress(json.dumps(_problem("T/0")).encode() + b"\n"),
                            gzip.compress(json.dumps(_problem("T/9")).encode() + b"\n")],
                           {"T/0": _problem("T/0")}),
    "pass-at-k jsonl": (ev, ev.read_counts, "c.jsonl", [b'{"task_id": "a", "n": 5, "c": 1}\n', b'{"n": 9, "c": 9}\n'],
                        [("a", 5, 1)]),
    "pass-at-k csv": (ev, ev.read_counts, "c.csv", [b"problem,n,c\r\na,5,2\r\n", b"n,c\n7,7\n"], [("a", 5, 2)]),
}


@pytest.mark.parametrize("name", sorted(READERS))
def test_reader_parses_the_bytes_it_hashed_even_if_the_file_is_replaced(tmp_path, monkeypatch, name):
    module, read, fname, (old, new), parsed = READERS[name]
    path = tmp_path / fname
    path.write_bytes(old)
    old_sha = _sha(path)
    real = module.read_input

    def read_then_replaced(p):  # a producer's atomic rename right after the read
        got = real(p)
        (tmp_path / "next").write_bytes(new)
        os.replace(tmp_path / "next", path)
        return got

    monkeypatch.setattr(module, "read_input", read_then_replaced)
    records = read(str(path))
    # the recorded sha256 is the file's as it was read, and the records are parsed from those bytes, though the
    # path holds other bytes by the time they are parsed
    assert records.input == {"path": str(path), "sha256": old_sha} and _sha(path) != old_sha
    assert (dict(records) if isinstance(records, dict) else list(records)) == parsed


def test_reader_refuses_a_fifo_naming_it(tmp_path):
    from xgen_data.errors import InputError

    fifo = tmp_path / "preds.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="preds.jsonl: is a FIFO"):
        rouge.read_texts(str(fifo))


def test_non_utf8_samples_name_file_and_line(tmp_path):
    from xgen_data.errors import InputError

    path = tmp_path / "s.jsonl"
    path.write_bytes(b'{"task_id": "T/0", "completion": "a"}\n{"task_id": "T/0", "completion": "\xff"}\n')
    with pytest.raises(InputError, match=r"s\.jsonl:2: not UTF-8"):
        he.read_samples(str(path), {"T/0": {}})


def test_pass_at_k_json_records_its_input(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"task_id": "a", "n": 5, "c": 1}\n')
    res = CliRunner().invoke(cli, ["eval", "pass-at-k", str(path), "-k", "1", "--format", "json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["inputs"] == [{"path": str(path), "sha256": _sha(path)}]
