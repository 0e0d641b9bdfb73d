"""Each exit code of docs/cli.md is produced by a real command: 0 done, 1 a problem found, 2 usage or a refused
action, 3 bad or damaged input, 4 a bug (the traceback's file named), 130 interrupted (KeyboardInterrupt here;
`xgen train` after a checkpoint in tests/test_curriculum.py)."""
from __future__ import annotations

import json
import os
import re

import pytest
from click.testing import CliRunner

from cli.main import cli
from xgen_data import errors


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("exit")
    src = folder / "nl.jsonl"
    src.write_text("".join(json.dumps({"id": f"d{i}", "text": f"document number {i} " * 20}) + "\n"
                           for i in range(5)))
    root = str(folder / "corpus")
    res = CliRunner().invoke(cli, ["ingest", "--corpus", root, "--quiet", "--workers", "1", str(src)])
    assert res.exit_code == 0, res.output
    return root


def _damaged_copy(tiny_corpus: str, tmp_path) -> tuple[str, str]:
    import shutil

    from xgen_data.store.corpus import Corpus

    root = str(tmp_path / "c")
    shutil.copytree(tiny_corpus, root)
    part = Corpus(root).parts("natural")[0].path
    data = bytearray(open(part, "rb").read())
    data[len(data) // 2] ^= 0x10
    open(part, "wb").write(bytes(data))
    return root, part


def test_0_done(tiny_corpus):
    res = CliRunner().invoke(cli, ["verify", "--corpus", tiny_corpus])
    assert res.exit_code == errors.EXIT_OK == 0, res.output


def test_1_verify_found_damage(tiny_corpus, tmp_path):
    root, part = _damaged_copy(tiny_corpus, tmp_path)
    res = CliRunner().invoke(cli, ["verify", "--corpus", root])
    assert res.exit_code == errors.EXIT_PROBLEM == 1, res.output
    assert part in res.output and "damaged" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(cli, ["verify", "--corpus", root, "--format", "json"])
    doc = json.loads(res.stdout)  # the findings still print as one document, then the error and exit 1
    assert res.exit_code == 1 and doc["damaged"] == 1 and "damaged" in doc["error"], res.output


def test_2_usage_and_refused(tiny_corpus):
    res = CliRunner().invoke(cli, ["verify", "--corpus", tiny_corpus, "--no-such-option"])
    assert res.exit_code == errors.EXIT_USAGE == 2, res.output
    res = CliRunner().invoke(cli, ["sql", "--corpus", tiny_corpus, "CREATE TABLE t AS SELECT 1"])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output


def test_3_bad_and_damaged_input(tiny_corpus, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "fine"}\n{not json\n')
    res = CliRunner().invoke(cli, ["ingest", "--corpus", str(tmp_path / "fresh"), "--quiet", str(bad)])
    assert res.exit_code == errors.EXIT_INPUT == 3 and f"{bad}:2" in res.output, res.output
    root, part = _damaged_copy(tiny_corpus, tmp_path)
    res = CliRunner().invoke(cli, ["mix", "build", "--corpus", root, "--recipe", "demo", "--out",
                                   str(tmp_path / "shards")])
    assert res.exit_code == 3 and part in res.output and "Traceback" not in res.output, res.output


def test_4_a_bug_names_the_traceback_file(tiny_corpus, tmp_path, monkeypatch):
    from xgen_data.stats import verify

    def broken(*args, **kwargs):
        return {}["no such key"]  # a KeyError that no code meant: a bug, not a user error

    monkeypatch.setattr(verify, "verify_corpus", broken)
    monkeypatch.setenv("XGEN_CRASH_DIR", str(tmp_path))
    res = CliRunner().invoke(cli, ["verify", "--corpus", tiny_corpus])
    assert res.exit_code == errors.EXIT_BUG == 4, res.output
    m = re.search(r"traceback written to (\S+)", res.output)
    assert "internal error (a bug in xgen): KeyError" in res.output and m, res.output
    assert os.path.dirname(m.group(1)) == str(tmp_path)
    assert "Traceback (most recent call last)" in open(m.group(1)).read()


def test_130_interrupted(tiny_corpus, monkeypatch):
    from xgen_data.stats import verify

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(verify, "verify_corpus", interrupted)
    res = CliRunner().invoke(cli, ["verify", "--corpus", tiny_corpus])
    assert res.exit_code == errors.EXIT_INTERRUPTED == 130 and "interrupted" in res.output, res.output


def test_ray_address_without_ray_is_usage(tiny_corpus):
    for args in (["--ray-address", "auto"], ["--ray-address", "auto", "--executor", "local"],
                 ["--executor", "local", "--ray-address", "auto"]):
        res = CliRunner().invoke(cli, ["dedup", "--corpus", tiny_corpus, *args])
        assert res.exit_code == errors.EXIT_USAGE == 2 and "--ray-address needs --executor ray" in res.output, args


def test_uri_hint_names_the_package_of_its_scheme(monkeypatch):
    import fsspec

    from xgen_data.sources import locations

    def missing(uri):
        raise ImportError("Install the implementation")

    monkeypatch.setattr(fsspec.core, "url_to_fs", missing)
    for uri, want in (("gs://b/x.jsonl", "pip install gcsfs"), ("hf://datasets/a/b.jsonl", "pip install huggingface_hub"),
                      ("s3://b/x.jsonl", "pip install 'xgen[remote]'")):
        with pytest.raises(errors.InputError, match=re.escape(want)) as err:
            locations.input_identity(uri)
        assert uri in str(err.value) and ("xgen[remote]" in str(err.value)) == uri.startswith("s3")
