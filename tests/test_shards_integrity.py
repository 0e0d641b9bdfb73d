"""Shards: the loader verifies each shard's sha256 on first open; rebuilds survive kill -9 at every rename;
the manifest and the `shards` view record the recipe."""
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner
from conftest import demo_code_only

from xgen_data.mixing import pipeline, recipe
from xgen_data.shards import packing
from xgen_data.shards import shard_format as shards
from xgen_data.stats import sql
from xgen_data.store import fsutil
from xgen_train.loop.data import ShardFormatError, ShardLoader

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = ("import sys; from xgen_data.mixing import recipe; from xgen_data.shards import packing; "
         "packing.build(sys.argv[1], recipe.load(sys.argv[2]), sys.argv[3], progress=False)")


@pytest.fixture(scope="module")
def corpus(sample_corpus, tmp_path_factory):
    dst = str(tmp_path_factory.mktemp("shc") / "corpus")
    shutil.copytree(sample_corpus, dst)
    pipeline.apply_recipe_steps(dst, demo_code_only(), progress=False)  # the attributes packing reads
    return dst


@pytest.fixture(scope="module")
def recipes(tmp_path_factory):
    """Two recipe files that give different shards: ``old`` (seed + 1) and ``new`` (the demo recipe)."""
    d = tmp_path_factory.mktemp("recipes")
    demo = demo_code_only()
    out = {}
    for name, seed in (("old", demo.seed + 1), ("new", demo.seed)):
        path = d / f"{name}.toml"
        path.write_text(recipe.to_toml(dataclasses.replace(demo, seed=seed)), encoding="utf-8")
        out[name] = str(path)
    return out


def _manifest(d):
    return json.load(open(os.path.join(d, "manifest.json")))


def _complete(d) -> bool:
    try:
        return shards.verify(d) == []
    except shards.ShardError:
        return False


def _siblings(out):
    head, tail = os.path.split(out)
    return sorted(n for n in os.listdir(head) if n.startswith(f".{tail}"))


# -- loader ---------------------------------------------------------------------------------------------------
def test_flipped_bit_in_a_shard_is_detected_on_first_read(corpus, recipes, tmp_path):
    out = str(tmp_path / "shards")
    packing.build(corpus, recipe.load(recipes["new"]), out, progress=False)
    m = _manifest(out)
    entry = next(e for e in m["shards"] if e["stage"] == "stage1" and e["substage"] == "s256")
    path = os.path.join(out, entry["path"])
    data = bytearray(open(path, "rb").read())
    data[1001] ^= 0x04  # one bit of one token; the token stays a valid id
    open(path, "wb").write(bytes(data))
    ld = ShardLoader(out, batch_size=4, stage="stage1", substage="s256")  # lazy: nothing read yet
    with pytest.raises(ShardFormatError, match=rf"{entry['path']}: sha256 mismatch"):
        for step in range(ld.n_sequences // 4 + 1):
            ld.batch_at(0, step)
    with pytest.raises(ShardFormatError, match="sha256 mismatch"):
        ShardLoader(out, batch_size=4, stage="stage1", substage="s256", verify=True)
    unchecked = ShardLoader(out, batch_size=4, stage="stage1", substage="s256", verify=False)
    assert unchecked.batch_at(0, 0)["tokens"].shape == (4, 256)  # --no-verify reads the damaged shard


def test_each_shard_is_hashed_once(corpus, recipes, tmp_path, monkeypatch):
    out = str(tmp_path / "shards")
    packing.build(corpus, recipe.load(recipes["new"]), out, progress=False)
    calls = []
    real = fsutil.sha256_file
    monkeypatch.setattr(fsutil, "sha256_file", lambda p, *a: calls.append(p) or real(p, *a))
    ld = ShardLoader(out, batch_size=8, stage="stage1", substage="s256")
    for step in range(ld.n_sequences // 8 + 2):  # one epoch opens every file
        ld.batch_at(1, step)
    assert sorted(calls) == sorted(set(calls)) and len(calls) == len(ld.files)


def test_train_cli_has_no_verify():
    from cli.train_cmd import train

    res = CliRunner().invoke(train, ["--help"])
    assert "--verify / --no-verify" in res.output


# -- rebuild crash safety ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("point", ["build.before_swap", "build.after_backup", "build.after_swap"])
def test_kill_at_each_rename_keeps_a_complete_set(corpus, recipes, tmp_path, point):
    out = str(tmp_path / "shards")
    packing.build(corpus, recipe.load(recipes["old"]), out, progress=False)
    old = _manifest(out)
    env = dict(os.environ, XGEN_CRASH_AT=point, PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-c", BUILD, corpus, recipes["new"], out], env=env, timeout=300,
                          capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()
    backup = shards.backup_dir(out)
    # The invariant: a complete set is in place, or (between the two renames) the old one is in the backup.
    assert _complete(out) or _complete(backup)
    if point == "build.after_backup":
        assert not os.path.exists(out) and _manifest(backup) == old
        with pytest.raises(shards.ShardError, match="was interrupted.*next build restores"):
            shards.read_manifest(out)
    expected = old if point != "build.after_swap" else None
    note = packing.recover_out_dir(out)  # what the next build does first
    assert _complete(out) and _siblings(out) == []
    if expected is not None:
        assert _manifest(out) == old
        assert (note is not None) == (point == "build.after_backup")
    else:
        assert _manifest(out)["seed"] == recipe.load(recipes["new"]).seed
    report = packing.build(corpus, recipe.load(recipes["new"]), out, progress=False)
    assert _complete(out) and _manifest(out)["seed"] == recipe.load(recipes["new"]).seed and _siblings(out) == []
    assert report.notes == []


def test_build_report_says_it_restored(corpus, recipes, tmp_path):
    out = str(tmp_path / "shards")
    packing.build(corpus, recipe.load(recipes["old"]), out, progress=False)
    env = dict(os.environ, XGEN_CRASH_AT="build.after_backup", PYTHONPATH=REPO)
    assert subprocess.run([sys.executable, "-c", BUILD, corpus, recipes["new"], out], env=env, timeout=300,
                          capture_output=True).returncode == -9
    from xgen_data.stats.verify import verify_corpus

    gone = [c for c in verify_corpus(corpus) if c.path == os.path.realpath(out)]  # not silently "ok"
    assert [c.status for c in gone] == ["missing"] and "next `xgen mix build` restores it" in gone[0].detail
    report = packing.build(corpus, recipe.load(recipes["new"]), out, progress=False)
    assert report.notes and "restored the previous shards" in report.notes[0]
    assert _complete(out) and _siblings(out) == []


def test_next_build_restores_the_old_set_instead_of_deleting_it(corpus, recipes, tmp_path):
    out = str(tmp_path / "shards")
    packing.build(corpus, recipe.load(recipes["old"]), out, progress=False)
    old_bytes = {e["path"]: open(os.path.join(out, e["path"]), "rb").read() for e in _manifest(out)["shards"]}
    env = dict(os.environ, XGEN_CRASH_AT="build.after_backup", PYTHONPATH=REPO)
    assert subprocess.run([sys.executable, "-c", BUILD, corpus, recipes["new"], out], env=env, timeout=300,
                          capture_output=True).returncode == -9
    # A later build that fails before writing anything (bad recipe) must still have restored the old set.
    broken = dataclasses.replace(recipe.load(recipes["new"]), stages=(
        dataclasses.replace(recipe.load(recipes["new"]).stages[0], proportions={"nope": 1.0}),))
    with pytest.raises(ValueError):
        packing.build(corpus, broken, out, progress=False)
    assert {e["path"]: open(os.path.join(out, e["path"]), "rb").read() for e in _manifest(out)["shards"]} == old_bytes
    assert _siblings(out) == []


# -- recipe in the manifest and the shards view -------------------------------------------------------------------
def test_manifest_and_shards_view_record_the_recipe(corpus, recipes, tmp_path):
    out = str(tmp_path / "shards")
    packing.build(corpus, recipe.load(recipes["new"]), out, progress=False)
    m = _manifest(out)
    text = open(recipes["new"], encoding="utf-8").read()
    assert m["recipe"] == "demo" and m["recipe_toml"] == text
    assert m["recipe_sha256"] == hashlib.sha256(text.encode()).hexdigest()
    rows = sql.connect(corpus, [out]).execute(
        "SELECT DISTINCT recipe, recipe_sha256 FROM shards WHERE shard_dir = ?", [out]).fetchall()
    assert rows == [("demo", m["recipe_sha256"])]
    assert recipe.load(recipes["new"]) == dataclasses.replace(_reload(m["recipe_toml"], tmp_path), path=recipes["new"])


def test_manifest_records_a_recipe_changed_in_memory_as_packed(corpus, recipes, tmp_path):
    out = str(tmp_path / "shards")
    changed = dataclasses.replace(recipe.load(recipes["new"]), seed=99)
    packing.build(corpus, changed, out, progress=False)
    m = _manifest(out)
    assert m["seed"] == 99 and _reload(m["recipe_toml"], tmp_path).seed == 99
    assert m["recipe_sha256"] == hashlib.sha256(m["recipe_toml"].encode()).hexdigest()


def _reload(text, tmp_path):
    p = tmp_path / "again.toml"
    p.write_text(text, encoding="utf-8")
    return recipe.load(str(p))


def test_shards_view_skips_a_0x_manifest_naming_the_rebuild(corpus, recipes, tmp_path, capsys):
    """A manifest of the 0.x format (no recipe fields, no manifest_sha256) is left out of the view with a
    warning that names it and the command that rebuilds it."""
    out = str(tmp_path / "shards")
    packing.build(corpus, recipe.load(recipes["new"]), out, progress=False)
    m = _manifest(out)
    for k in ("recipe", "recipe_sha256", "recipe_toml", "manifest_sha256"):
        m.pop(k)
    fsutil.write_json(os.path.join(out, "manifest.json"), m)
    capsys.readouterr()
    got = sql.connect(corpus, [out]).execute("SELECT count(*) FROM shards WHERE shard_dir = ?", [out]).fetchone()
    assert got[0] == 0
    err = capsys.readouterr().err
    assert os.path.join(out, "manifest.json") in err and "no manifest_sha256" in err
    assert f"xgen mix build --corpus DIR --recipe R --out {out}" in err
