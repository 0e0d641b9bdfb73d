"""Hostile-user checks (bad input, damaged files, kill -9) on the shared sample slice: each test states the
invariant it checks."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from xgen_data.attributes import licenses
from xgen_data.mixing import defaults
from xgen_data.shards import shard_format as shards
from xgen_data.store import duckdb_settings


def _flip(path: str, offset: int) -> None:
    data = bytearray(open(path, "rb").read())
    data[offset] ^= 0x01
    open(path, "wb").write(bytes(data))


def test_damaged_shard_index_is_caught_by_verify_and_by_its_reader(demo_shards, tmp_path):
    """Every shard's .idx.parquet carries a SHA-256 in the manifest; `shards.verify` (so `xgen verify`) and
    `read_index` check it, so a flipped byte in an index is found."""
    out = str(tmp_path / "shards")
    shutil.copytree(demo_shards, out)
    m = json.load(open(os.path.join(out, "manifest.json")))
    entry = m["shards"][0]
    assert len(entry["index_sha256"]) == 64
    assert shards.verify(out) == []
    assert shards.read_index(out, entry).num_rows > 0
    idx = os.path.join(out, entry["index_path"])
    _flip(idx, os.path.getsize(idx) // 2)
    problems = shards.verify(out)
    assert len(problems) == 1 and entry["index_path"] in problems[0] and "does not match manifest" in problems[0]
    with pytest.raises(shards.ShardError, match="damaged or changed index"):
        shards.read_index(out, entry)
    os.remove(idx)
    assert "index file listed in manifest.json is missing" in shards.verify(out)[0]


def _flip_middle(path: str) -> None:
    _flip(path, os.path.getsize(path) // 2)


def test_sql_refuses_a_damaged_part_instead_of_showing_its_rows(corpus_copy):
    """`xgen sql` / `stats` read the parts: they verify them first, like the steps, so a flipped byte that
    still decodes never gives silently wrong rows."""
    from xgen_data.stats import sql
    from xgen_data.store.corpus import Corpus, DamagedPartError

    part = next(p for p in Corpus(corpus_copy).parts() if p.subset == "code")
    _flip_middle(part.path)
    with pytest.raises(DamagedPartError, match=rf"{part.name} is damaged.*xgen ingest --corpus"):
        sql.connect(corpus_copy, quiet=True)
    from click.testing import CliRunner

    from cli.main import cli

    res = CliRunner().invoke(cli, ["sql", "--corpus", corpus_copy, "SELECT count(*) FROM documents"])
    assert res.exit_code == 3 and f"{part.name} is damaged" in res.output and "Traceback" not in res.output


def test_damaged_attribute_file_is_refused_then_recomputed(corpus_copy):
    """Readers of attribute sets (the `documents` view, so sql, stats, mix plan/build) check each file against
    the SHA-256 recorded at its commit; a damaged set is not current, so `xgen filter` computes it again;
    a damaged attribute file is never read as if intact."""
    from xgen_data.mixing import decisions
    from xgen_data.stats import sql, verify
    from xgen_data.store.corpus import Corpus, DamagedAttributeError

    corpus = Corpus(corpus_copy)
    flt = decisions.from_defaults(corpus).filter
    key = licenses.license_params(flt["allow"])
    _, path = corpus.attribute_files("license", key)[0]
    before = sql.connect(corpus_copy, quiet=True).execute(
        "SELECT count(*) FILTER (kept), string_agg(DISTINCT license_reason ORDER BY license_reason) FROM documents"
    ).fetchone()
    _flip_middle(path)
    assert not corpus.attribute_current("license", key)
    with pytest.raises(DamagedAttributeError, match=rf"license attribute file {path} is damaged.*xgen filter"):
        sql.connect(corpus_copy, quiet=True)
    os.remove(path)
    with pytest.raises(DamagedAttributeError, match="is missing"):
        sql.connect(corpus_copy, quiet=True)
    defaults.run_filters(corpus_copy)  # the stand-alone step sees the set is not current and writes it again
    # (shards rows left out: the session corpus this one copies may have registered demo_shards)
    assert all(c.status == "ok" for c in verify.verify_corpus(corpus_copy) if c.kind != "shards")
    after = sql.connect(corpus_copy, quiet=True).execute(
        "SELECT count(*) FILTER (kept), string_agg(DISTINCT license_reason ORDER BY license_reason) FROM documents"
    ).fetchone()
    assert after == before


def test_sql_permission_error_is_not_blamed_on_a_damaged_part(sample_corpus):
    """A query that names a file under the corpus is refused by DuckDB's lock-down, and the message says so
    (usage, exit 2), not that a corpus part is damaged."""
    from click.testing import CliRunner

    from cli.main import cli

    q = f"SELECT * FROM read_text('{sample_corpus}/docs/../corpus.json')"
    res = CliRunner().invoke(cli, ["sql", "--corpus", sample_corpus, q])
    assert res.exit_code == 2 and "Permission Error" in res.output
    assert "damaged" not in res.output and "query the views" in res.output


@pytest.mark.parametrize("edit, names", [
    (lambda m, k, a: m["inputs"][k].update(parts=["../../../etc/passwd"]), "part '../../../etc/passwd'"),
    (lambda m, k, a: m["inputs"][k].update(subset="../x"), "subset '../x'"),
    (lambda m, k, a: m["attributes"][a].update(generation="../../../../x"), "generation '../../../../x'"),
    (lambda m, k, a: m["attributes"][a]["files"].update({"../../corpus.json": "0" * 64}), "file '../../corpus.json'"),
])
def test_registry_names_that_leave_the_corpus_are_refused(corpus_copy, edit, names):
    """corpus.json names become paths: a hand-edited name with '..' is refused when the registry is read, naming
    the bad entry (never a raw `[Errno 2]`, never a reader pointed at files outside the corpus)."""
    from xgen_data.stats import verify
    from xgen_data.store.corpus import CorpusError

    path = os.path.join(corpus_copy, "corpus.json")
    m = json.load(open(path))
    edit(m, next(iter(m["inputs"])), next(iter(m["attributes"])))
    json.dump(m, open(path, "w"))
    with pytest.raises(CorpusError, match=rf"registry is malformed: .*{names}.* is not a plain name"):
        verify.verify_corpus(corpus_copy)


def test_shards_view_exists_before_any_build(corpus_copy):
    """`shards` is one of the views README promises: before the first `xgen mix build` it is empty, with its
    columns (not a DuckDB catalog error)."""
    from xgen_data.stats import sql
    from xgen_data.store.corpus import Corpus

    corpus = Corpus(corpus_copy)
    meta = corpus.read_meta()
    meta["shard_dirs"] = []  # (the session's sample corpus may have registered the demo shards)
    corpus.write_meta(meta)
    con = sql.connect(corpus_copy, quiet=True)
    assert con.execute("SELECT count(*) FROM shards").fetchone() == (0,)
    cols = [r[0] for r in con.execute("DESCRIBE shards").fetchall()]
    assert tuple(cols) == sql.SHARDS_COLUMNS


@pytest.mark.parametrize("field", ["peak_lr", "weight_decay", "clip_norm", "final_lr_ratio"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_optimizer_refuses_non_finite_settings(field, value):
    """`xgen train --lr nan` trained (every update non-finite, so never applied) and reported success."""
    from xgen_train.loop.optimizer import OptimizerConfig

    with pytest.raises(ValueError, match=rf"{field} must be a finite number"):
        OptimizerConfig(**{field: value})


def test_verify_of_a_corpus_with_nothing_registered_says_so(tmp_path):
    """A corpus whose first ingest was killed before it registered anything printed `0 checks ()`."""
    from click.testing import CliRunner

    from cli.main import cli
    from xgen_data.store.corpus import Corpus

    root = tmp_path / "corpus"
    Corpus(str(root), create=True)  # what an ingest killed before its registry write leaves
    res = CliRunner().invoke(cli, ["verify", "--corpus", str(root)])
    assert res.exit_code == 0 and "1 checks (ok 1; nothing registered yet" in res.output  # the registry itself


def test_first_ingest_killed_while_creating_the_registry_can_be_rerun(tmp_path):
    """kill -9 at `write_json.tmp_written` of a new corpus left only `.corpus.json.tmp-<pid>`; the re-run then
    refused the folder ("exists, is not empty and is not an xgen corpus") until the user deleted it."""
    import subprocess
    import sys

    from conftest import SAMPLE

    from xgen_data.store import fsutil

    root = str(tmp_path / "corpus")
    code = ("import sys; from xgen_data.store.corpus import Corpus; Corpus(sys.argv[1], create=True)")
    env = {**os.environ, fsutil.CRASH_ENV: "write_json.tmp_written"}
    proc = subprocess.run([sys.executable, "-c", code, root], env=env, cwd=os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    assert proc.returncode == -9 and [n.startswith(".corpus.json.tmp-") for n in os.listdir(root)] == [True]
    from xgen_data.sources import ingest

    ingest.ingest(root, [(os.path.join(SAMPLE, "code.jsonl"), None)], workers=1, progress=False)
    names = os.listdir(root)
    assert "corpus.json" in names and not [n for n in names if ".tmp-" in n]


def test_spill_folders_of_killed_queries_are_swept(tmp_path, monkeypatch):
    """A `xgen sql` killed with -9 left /tmp/xgen-sql-<pid> (990 MB in one try) for good."""
    import subprocess

    monkeypatch.setattr(duckdb_settings.tempfile, "gettempdir", lambda: str(tmp_path))
    monkeypatch.setattr(duckdb_settings, "_SWEPT", [])
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / f"xgen-sql-{dead.pid}").mkdir()
    (tmp_path / f"xgen-sql-{dead.pid}" / "duckdb_temp_block-1.block").write_bytes(b"x" * 10)
    (tmp_path / f"xgen-sql-{os.getppid()}").mkdir()  # a live process's folder stays
    assert duckdb_settings.spill_dir() == str(tmp_path / f"xgen-sql-{os.getpid()}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"xgen-sql-{os.getppid()}"]
