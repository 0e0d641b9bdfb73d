"""Crash consistency and checksums: every step is killed (SIGKILL) at each of its commit
points in a subprocess; the corpus must then be in its old or its new state, fully verifiable, and a following
run must give the same result as an uninterrupted one. A flipped bit in a part is caught by `xgen verify` and
by `mix build`."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys

import pytest
from click.testing import CliRunner
from conftest import SAMPLE

from xgen_data.attributes import filters
from xgen_data.errors import RefusedError
from xgen_data.mixing import defaults, recipe
from xgen_data.shards import packing
from xgen_data.shards import shard_format as shards
from xgen_data.sources import ingest
from xgen_data.stats import sql, verify
from xgen_data.store import corpus as corpus_mod
from xgen_data.store import fsutil

RECIPE = """name = "crash"
seed = 3
[filters]
min_tokens = 60
[dedup]
enabled = true
[[stages]]
name = "s1"
proportions = { natural = 0.9, code = 0.1 }
[[stages.substages]]
name = "a"
seq_len = 64
tokens = 12800
"""


def _head(name: str, n: int, out: str) -> str:
    with open(os.path.join(SAMPLE, name), encoding="utf-8") as f, open(out, "w", encoding="utf-8") as g:
        for _, line in zip(range(n), f):
            g.write(line)
    return out


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small real corpus (120 natural + 40 code documents of the sample slice) with default decisions set,
    a third input file not ingested yet, and a recipe file."""
    d = tmp_path_factory.mktemp("integrity")
    nl = _head("nl.jsonl", 120, str(d / "nl.jsonl"))
    code = _head("code.jsonl", 40, str(d / "code.jsonl"))
    extra = _head("instruct.jsonl", 60, str(d / "instruct.jsonl"))
    root = str(d / "corpus")
    ingest.ingest(root, [(nl, None), (code, None)], workers=1, progress=False)
    defaults.run_filters(root)
    defaults.run_dedup(root, workers=1, progress=False)
    (d / "crash.toml").write_text(RECIPE)
    return {"root": root, "extra": extra, "recipe": str(d / "crash.toml")}


def _state(root: str) -> dict:
    """What a step changes, without random generation names: registry entries and derived decisions."""
    meta = json.load(open(os.path.join(root, "corpus.json")))
    attrs = {k: {kk: vv for kk, vv in v.items() if kk != "generation"} for k, v in meta.get("attributes", {}).items()}
    con = sql.connect(root, quiet=True)
    docs = con.execute("""SELECT subset, id, kept, drop_reason, dup_cluster, dup_of FROM documents
                          ORDER BY subset, id""").fetchall()
    return {"inputs": meta["inputs"], "attributes": attrs, "defaults": meta.get("default_decisions"), "docs": docs}


def _invariant(root: str) -> None:
    """Registry parses; every registered file exists with its recorded sha256; nothing unregistered is read."""
    checks = verify.verify_corpus(root)
    bad = [c for c in checks if c.status in verify.DAMAGE]
    assert not bad, bad


def _no_leftovers(root: str) -> None:
    meta = json.load(open(os.path.join(root, "corpus.json")))
    live = {os.path.join(root, "attributes", *k.split("/"), v["generation"]) for k, v in meta["attributes"].items()}
    gens = {os.path.join(dp, g) for dp, dirs, _ in os.walk(os.path.join(root, "attributes")) for g in dirs
            if os.path.relpath(os.path.join(dp, g), os.path.join(root, "attributes")).count(os.sep) == 2}
    assert gens == live
    assert not [n for n in os.listdir(root) if ".tmp-" in n]
    registered = {p.path for p in corpus_mod.Corpus(root).parts()}
    on_disk = {os.path.join(dp, f) for dp, _, fs in os.walk(os.path.join(root, "docs")) for f in fs}
    assert on_disk == registered


def _kill_at(point: str, code: str) -> None:
    env = {**os.environ, fsutil.CRASH_ENV: point}
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == -signal.SIGKILL, (point, p.returncode, p.stderr[-3000:])


STEPS = {
    # step: (commit points in order, python code run in the subprocess, the same step in this process)
    "filter": (["license.part_written", "license.before_commit", "write_json.tmp_written", "license.committed"],
               "from xgen_data.attributes import filters; from xgen_data.mixing import defaults; defaults.run_filters({root!r}, min_tokens=50, "
               "allow=filters.licenses.default_allow_list() + ('PSF-2.0',))",
               lambda c: defaults.run_filters(c["root"], min_tokens=50,
                                             allow=filters.licenses.default_allow_list() + ("PSF-2.0",))),
    "dedup": (["dedup.part_written", "dedup.before_commit", "dedup.committed"],
              "from xgen_data.mixing import defaults; defaults.run_dedup({root!r}, threshold=0.8, workers=1, progress=False)",
              lambda c: defaults.run_dedup(c["root"], threshold=0.8, workers=1, progress=False)),
    "ingest": (["ingest.parts_written", "ingest.part_renamed", "ingest.registered"],
               "from xgen_data.sources import ingest; ingest.ingest({root!r}, [({extra!r}, None)], workers=1, progress=False)",
               lambda c: ingest.ingest(c["root"], [(c["extra"], None)], workers=1, progress=False)),
}
#: commit points after which the new state is the committed one
AFTER_COMMIT = {"license.committed", "dedup.committed", "ingest.registered"}


@pytest.mark.parametrize("step", sorted(STEPS))
@pytest.mark.slow  # > 7 s on 2 cores
def test_kill_at_every_commit_point(small, tmp_path, step):
    points, code, run = STEPS[step]
    old = _state(small["root"])
    ref = str(tmp_path / "ref")
    shutil.copytree(small["root"], ref)
    run({**small, "root": ref})  # uninterrupted
    new = _state(ref)
    assert new != old
    for point in points:
        root = str(tmp_path / point)
        shutil.copytree(small["root"], root)
        _kill_at(point, code.format(root=root, extra=small["extra"]))
        got = _state(root)
        assert got == (new if point in AFTER_COMMIT else old), point  # old or new, never mixed
        _invariant(root)
        run({**small, "root": root})  # the next run completes, removes leftovers, and gives the same result
        assert _state(root) == new, point
        _invariant(root)
        _no_leftovers(root)


@pytest.mark.slow  # > 7 s on 2 cores
def test_kill_mix_build_at_every_commit_point(small, tmp_path):
    r = recipe.load(small["recipe"])
    root = str(tmp_path / "c")
    shutil.copytree(small["root"], root)

    ref = str(tmp_path / "ref")
    packing.build_recipe(root, r, ref, workers=1, progress=False)
    want = open(os.path.join(ref, "manifest.json")).read()
    for point in ("build.shards_written", "build.swapped"):
        out = str(tmp_path / point)
        code = (f"from xgen_data.mixing import recipe; from xgen_data.shards import packing; packing.build_recipe({root!r}, "
                f"recipe.load({small['recipe']!r}), {out!r}, workers=1, progress=False)")
        _kill_at(point, code)
        if point == "build.shards_written":
            assert not os.path.exists(out)  # the new set is not in place yet
        else:
            assert shards.verify(out) == [] and open(os.path.join(out, "manifest.json")).read() == want
        _invariant(root)
        packing.build_recipe(root, r, out, workers=1, progress=False)
        assert open(os.path.join(out, "manifest.json")).read() == want and shards.verify(out) == []
        assert not [n for n in os.listdir(tmp_path) if n.startswith(f".{point}")]  # temporary folders removed


def test_recipe_flow_sees_content_changes_not_names(small, tmp_path):
    """A part overwritten in place (same name, other bytes) is damage, never 'up to date'."""
    import pyarrow.parquet as pq

    from xgen_data.mixing import pipeline

    root = str(tmp_path / "c")
    shutil.copytree(small["root"], root)
    r = recipe.load(small["recipe"])
    pipeline.apply_recipe_steps(root, r, workers=1, progress=False)
    c = corpus_mod.Corpus(root)
    part = c.parts("natural")[0]
    t = pq.read_table(part.path)
    pq.write_table(t.slice(0, 50), part.path, compression="zstd")  # what `COPY (... LIMIT 50) TO part` did
    # the fingerprint is over recorded contents: an in-place change is damage, caught before any step reads it
    with pytest.raises(corpus_mod.DamagedPartError, match="re-ingest"):
        pipeline.apply_recipe_steps(root, r, workers=1, progress=False)


def test_flipped_bit_detected_by_verify_and_mix_build(small, tmp_path):
    from cli.main import cli

    root = str(tmp_path / "c")
    shutil.copytree(small["root"], root)
    runner = CliRunner()
    res = runner.invoke(cli, ["verify", "--corpus", root])
    assert res.exit_code == 0, res.output
    part = corpus_mod.Corpus(root).parts("code")[0]
    data = bytearray(open(part.path, "rb").read())
    data[len(data) // 2] ^= 0x10  # one bit inside the data pages
    open(part.path, "wb").write(bytes(data))
    res = runner.invoke(cli, ["verify", "--corpus", root])
    assert res.exit_code == 1 and part.path in res.output and "damaged" in res.output
    res = runner.invoke(cli, ["verify", "--corpus", root, "--format", "json"])
    (detail,) = [r["detail"] for t in json.loads(res.stdout)["tables"] for r in t["rows"] if r["status"] == "damaged"]
    typed = shlex.split(detail.split("re-ingest its input: `")[1].rstrip("`"))  # the repair, as printed
    assert typed[:4] == ["xgen", "ingest", "--corpus", root] and "--subset" in typed, detail
    assert runner.invoke(cli, typed[1:] + ["--quiet"]).exit_code == 0
    assert runner.invoke(cli, ["verify", "--corpus", root]).exit_code == 0
    open(part.path, "wb").write(bytes(data))  # the same bit flipped again
    # the part is the damage; its (intact) attribute files are not blamed, nor is their deletion advised
    from xgen_data.stats.verify import verify_corpus

    checks = verify_corpus(root)
    assert [c.path for c in checks if c.status == "damaged"] == [part.path]
    unchecked = [c for c in checks if c.status == "unchecked"]
    assert unchecked and all(c.kind == "attributes" and part.path in c.detail for c in unchecked)
    assert "delete" not in res.output
    res = runner.invoke(cli, ["mix", "build", "--corpus", root, "--recipe", small["recipe"], "--workers", "1",
                              "--out", str(tmp_path / "s")])
    assert res.exit_code == 3 and part.path in res.output and "re-ingest" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "s").exists()
    # packing.build on its own checks too (the tokens it packs come from the parts)
    with pytest.raises(corpus_mod.DamagedPartError, match="code"):
        packing.build(root, recipe.load(small["recipe"]), str(tmp_path / "s2"), progress=False)


def test_a_linked_out_builds_its_target_and_a_link_into_the_corpus_is_refused(small, tmp_path):
    root = str(tmp_path / "c")
    shutil.copytree(small["root"], root)
    rec = recipe.load(small["recipe"])
    packing.build(root, rec, str(tmp_path / "S0"), progress=False)
    os.symlink(tmp_path / "S0", tmp_path / "S1")
    packing.build(root, rec, str(tmp_path / "S1"), progress=False)  # a rebuild through the link
    assert os.path.islink(tmp_path / "S1") and (tmp_path / "S0" / "manifest.json").is_file()
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".S")]  # no backup or build folder left
    assert json.load(open(os.path.join(root, "corpus.json")))["shard_dirs"] == [os.path.realpath(tmp_path / "S0")]
    os.symlink(os.path.join(root, "docs"), tmp_path / "into")
    with pytest.raises(RefusedError, match="is inside the input"):
        packing.build(root, rec, str(tmp_path / "into" / "S"), progress=False)
    os.symlink(tmp_path / "gone", tmp_path / "dangling")
    with pytest.raises(ValueError, match="which does not exist"):
        packing.build(root, rec, str(tmp_path / "dangling"), progress=False)


def test_a_copied_corpus_leaves_out_the_shard_folders_of_the_corpus_it_was_copied_from(small, tmp_path):
    from cli.main import cli

    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    shutil.copytree(small["root"], a)
    rec = recipe.load(small["recipe"])
    packing.build(a, rec, str(tmp_path / "SA"), progress=False)
    shutil.copytree(a, b)  # cp -r: b's corpus.json lists a's shards folder
    shard = tmp_path / "SA" / shards.read_manifest(str(tmp_path / "SA"))["shards"][0]["path"]
    shard.write_bytes(shard.read_bytes()[:-1] + b"\1")  # damage a's shards: b's verify must not report them
    res = CliRunner().invoke(cli, ["verify", "--corpus", b])
    assert res.exit_code == 0 and str(tmp_path / "SA") not in res.output.replace(a, "") and "copy" in res.output
    assert CliRunner().invoke(cli, ["verify", "--corpus", a]).exit_code == 1  # a's own still are
    assert sql.connect(b, quiet=True).execute("SELECT count(*) FROM shards").fetchone() == (0,)
    packing.build(b, rec, str(tmp_path / "SB"), progress=False)  # b registers its own, alone
    assert json.load(open(os.path.join(b, "corpus.json")))["shard_dirs"] == [os.path.realpath(tmp_path / "SB")]
    assert sql.connect(b, quiet=True).execute("SELECT DISTINCT shard_dir FROM shards").fetchall() == [
        (os.path.realpath(tmp_path / "SB"),)]


def test_verify_checks_attribute_files(small, tmp_path):
    from cli.main import cli

    root = str(tmp_path / "c")
    shutil.copytree(small["root"], root)
    meta = json.load(open(os.path.join(root, "corpus.json")))
    key, state = next((k, v) for k, v in meta["attributes"].items() if k.startswith("dedup/"))
    attr = os.path.join(root, "attributes", *key.split("/"), state["generation"], next(iter(state["files"])))
    runner = CliRunner()
    res = runner.invoke(cli, ["verify", "--corpus", root])
    assert res.exit_code == 0, res.output
    with open(attr, "r+b") as f:
        f.seek(20)
        b = f.read(1)
        f.seek(20)
        f.write(bytes([b[0] ^ 1]))
    res = runner.invoke(cli, ["verify", "--corpus", root])
    assert res.exit_code == 1 and attr in res.output


def test_an_edited_registry_is_refused(small, tmp_path):
    """A flipped digit of a part's recorded SHA-256 in corpus.json is refused by every reader, naming the file."""
    from cli.main import cli

    root = str(tmp_path / "c")
    shutil.copytree(small["root"], root)
    part = corpus_mod.Corpus(root).parts("code")[0]
    data = bytearray(open(part.path, "rb").read())
    data[len(data) // 3: len(data) // 3 + 4096] = bytes(4096)  # 4 KiB of a data page zeroed: it cannot decode
    open(part.path, "wb").write(bytes(data))
    path = os.path.join(root, "corpus.json")
    text = open(path, encoding="utf-8").read()
    i = text.index('"part_sha256"') + len('"part_sha256": {"') + 1
    i = text.index('": "', i) + 4
    open(path, "w", encoding="utf-8").write(text[:i] + ("0" if text[i] != "0" else "1") + text[i + 1:])
    runner = CliRunner()
    for args in (["verify", "--corpus", root], ["sql", "--corpus", root, "SELECT count(*) FROM documents"]):
        res = runner.invoke(cli, args)
        want = 1 if args[0] == "verify" else 3  # verify found damage; sql cannot read damaged input
        assert res.exit_code == want and "does not match its registry_sha256" in res.output and path in res.output
        assert "xgen ingest --corpus NEW --subset code " in res.output  # how to rebuild


@pytest.mark.parametrize("old", ["no-registry-sha256", "no-part-sha256"])
def test_a_0x_registry_is_one_error_naming_the_rebuild(small, tmp_path, old):
    """A 0.x registry (no registry_sha256, or a part without a recorded sha256 under a stamped registry) is
    refused by every reader with one error that names corpus.json and the `xgen ingest` commands that rebuild
    the corpus; nothing is converted or written."""
    from cli.main import cli

    root = str(tmp_path / "c")
    shutil.copytree(small["root"], root)
    path = os.path.join(root, "corpus.json")
    meta = json.load(open(path))
    if old == "no-registry-sha256":
        meta.pop(corpus_mod.REGISTRY_SHA256)
        json.dump(meta, open(path, "w"))
    else:
        next(iter(meta["inputs"].values()))["part_sha256"].popitem()
        fsutil.write_json(path, {**meta, corpus_mod.REGISTRY_SHA256: corpus_mod.registry_sha256(meta)})
    before = open(path, "rb").read()
    inputs = {v["subset"]: v["path"] for v in meta["inputs"].values()}
    with pytest.raises(corpus_mod.CorpusError, match=r"older xgen \(0\.x\)") as err:
        corpus_mod.Corpus(root)
    assert path in str(err.value)
    for subset, src in inputs.items():
        assert f"`xgen ingest --corpus NEW --subset {subset} " in str(err.value) and src in str(err.value)
    runner = CliRunner()
    for args in (["verify", "--corpus", root], ["sql", "--corpus", root, "SELECT count(*) FROM documents"],
                 ["mix", "build", "--corpus", root, "--recipe", small["recipe"], "--out", str(tmp_path / "s")]):
        res = runner.invoke(cli, args)
        assert res.exit_code == 3 and path in res.output and "older xgen (0.x)" in res.output, (args, res.output)
    assert open(path, "rb").read() == before


def test_the_0x_rebuild_commands_run_as_printed(tmp_path):
    """The rebuild commands of a 0.x registry, typed as printed (a path with a space and an apostrophe, an input
    read with --on-error skip, a record without an id), ingest the same parts again."""
    import re

    from cli.main import cli

    folder = tmp_path / "raw inputs" / "it's here"
    folder.mkdir(parents=True)
    lines = open(os.path.join(SAMPLE, "code.jsonl"), encoding="utf-8").readlines()[:6]
    no_id = json.dumps({"text": "a record without an id " * 20}) + "\n"
    (folder / "code.jsonl").write_text("".join(lines[:3]) + '{"text": "unterminated\n' + no_id + "".join(lines[3:]))
    root = str(tmp_path / "c")
    ingest.ingest(root, [(str(folder / "code.jsonl"), None)], workers=1, on_error="skip", progress=False,
                  id_from="line")
    path = os.path.join(root, "corpus.json")
    meta = json.load(open(path))
    meta.pop(corpus_mod.REGISTRY_SHA256)
    json.dump(meta, open(path, "w"))
    with pytest.raises(corpus_mod.CorpusError) as err:
        corpus_mod.Corpus(root)
    (typed,) = re.findall(r"`(xgen ingest [^`]*)`", str(err.value))
    new = str(tmp_path / "new")
    argv = [new if w == "NEW" else w for w in shlex.split(typed)]
    assert argv[:2] == ["xgen", "ingest"] and "--on-error" in argv and "--id-from" in argv
    res = CliRunner().invoke(cli, argv[1:] + ["--quiet"])
    assert res.exit_code == 0, res.output
    rebuilt = {v["subset"]: v["part_sha256"] for v in corpus_mod.Corpus(new).read_meta()["inputs"].values()}
    assert rebuilt == {v["subset"]: v["part_sha256"] for v in meta["inputs"].values()}


def test_rebuild_commands_keep_metadata_tokens():
    meta = {"inputs": {"code:ab:metadata-tokens:id-sha256": {"subset": "code", "path": "/d/a b.jsonl",
                                                            "skipped": {}},
                       "code:cd": {"subset": "code", "path": "/d/c.jsonl", "skipped": {}},
                       "code:ef": {"subset": "code", "path": "/d/e.jsonl", "skipped": {"missing_id": 2}}}}
    assert corpus_mod.rebuild_commands(meta) == [
        "xgen ingest --corpus NEW --subset code --id-from line /d/c.jsonl",
        "xgen ingest --corpus NEW --subset code --metadata-tokens --id-from sha256 '/d/a b.jsonl'",
        "xgen ingest --corpus NEW --subset code --on-error skip /d/e.jsonl"]


@pytest.mark.slow  # > 7 s on 2 cores
def test_kill_language_step_at_every_commit_point(small, tmp_path):
    """The `language` attribute step (xgen_data.attributes.languages) is crash-consistent like license and dedup."""
    from xgen_data.attributes import language_step, languages

    base = str(tmp_path / "base")
    shutil.copytree(small["root"], base)
    c = corpus_mod.Corpus(base)
    meta = c.read_meta()
    del meta["attributes"][c.attribute_key(languages.LANGUAGE_STEP, languages.language_params())]
    c.write_meta(meta)  # a corpus whose language attributes were never computed

    def run(root):
        cc = corpus_mod.Corpus(root)
        with cc.lock():
            assert language_step.compute_language_attributes(cc)

    old = _state(base)
    ref = str(tmp_path / "ref")
    shutil.copytree(base, ref)
    run(ref)
    new = _state(ref)
    assert new != old
    code = ("from xgen_data.attributes import language_step; from xgen_data.store import corpus; c = corpus.Corpus({root!r}); l = c.lock(); l.__enter__(); "
            "language_step.compute_language_attributes(c)")
    for point in ("language.part_written", "language.before_commit", "write_json.tmp_written", "language.committed"):
        root = str(tmp_path / point)
        shutil.copytree(base, root)
        _kill_at(point, code.format(root=root))
        assert _state(root) == (new if point == "language.committed" else old), point
        _invariant(root)
        if point != "language.committed":
            run(root)
        else:
            with corpus_mod.Corpus(root).lock():
                corpus_mod.Corpus(root).remove_unregistered()
        assert _state(root) == new, point
        _invariant(root)
        _no_leftovers(root)
