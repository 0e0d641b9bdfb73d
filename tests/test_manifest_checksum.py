"""The shards manifest's self-checksum (`manifest_sha256`): an edit of manifest.json itself (a token count, a
proportion) is caught by its reader, the trainer's loader and `xgen verify`; a manifest without the field (the 0.x
format) is one error naming the rebuild. Built from the shared sample corpus by the real builder."""
import json
import os
import shutil

import pytest
from click.testing import CliRunner

from cli.main import cli
from xgen_data.mixing import recipe
from xgen_data.shards import packing
from xgen_data.shards import shard_format as shards
from xgen_data.stats.verify import verify_corpus
from xgen_train.loop.data import ShardFormatError, ShardLoader

# Two subsets in one stage (a mixture), two sub-stages; small enough to build in seconds.
RECIPE = """name = "checksum-mix"
seed = 7
[dedup]
enabled = false
[[stages]]
name = "stage1"
proportions = { natural = 0.75, code = 0.25 }
[[stages.substages]]
name = "s64"
seq_len = 64
tokens = 16_384
heldout_sequences = 4
[[stages.substages]]
name = "s128"
seq_len = 128
tokens = 8_192
"""


@pytest.fixture()
def built(corpus_copy, tmp_path):
    """(corpus, shards folder): a mixture built into a folder registered in a private corpus copy."""
    path = tmp_path / "mix.toml"
    path.write_text(RECIPE, encoding="utf-8")
    out = str(tmp_path / "shards")
    packing.build(corpus_copy, recipe.load(str(path)), out, progress=False)
    return corpus_copy, out


def _manifest_path(out):
    return os.path.join(out, "manifest.json")


def _rewrite(out, fn):
    """Edit manifest.json by hand, as a user would: load, change, dump (without re-stamping the checksum)."""
    m = json.load(open(_manifest_path(out), encoding="utf-8"))
    fn(m)
    with open(_manifest_path(out), "w", encoding="utf-8") as f:
        json.dump(m, f, indent=1, ensure_ascii=False)


def _verify_rows(corpus, out):
    return [c for c in verify_corpus(corpus) if c.kind == "shards" and c.path in (out, _manifest_path(out))]


def test_round_trip_records_and_checks_the_manifest_sha256(built, tmp_path, capsys):
    corpus, out = built
    text = open(_manifest_path(out), encoding="utf-8").read()
    m = json.loads(text)
    assert m["manifest_sha256"] == shards.manifest_sha256(m) and len(m["manifest_sha256"]) == 64
    assert list(m)[-1] == "manifest_sha256"
    assert shards.read_manifest(out) == m and shards.verify(out) == []
    assert ShardLoader(out, batch_size=2, substage="s64").n_sequences > 0
    assert [(c.status, c.path) for c in _verify_rows(corpus, out)] == [("ok", out)]
    assert "warning" not in capsys.readouterr().err
    # the checksum is over canonical JSON: re-indenting or re-ordering the keys is not an edit
    _rewrite(out, lambda d: None)
    assert open(_manifest_path(out), encoding="utf-8").read() != text
    assert shards.read_manifest(out) == m
    # the same inputs and seed give the same manifest bytes
    again = str(tmp_path / "again")
    packing.build(corpus, recipe.load(str(tmp_path / "mix.toml")), again, progress=False)
    assert open(_manifest_path(again), encoding="utf-8").read() == text


@pytest.mark.parametrize("edit", [
    pytest.param(lambda m: m["stages"][0]["substages"][0].update(n_tokens=1), id="token-count"),
    pytest.param(lambda m: next(p for p in m["plan"] if p["subset"] == "code").update(proportion=0.5),
                 id="proportion"),
    pytest.param(lambda m: m["shards"][0]["tokens_per_subset"].update(natural=1), id="shard-tokens-per-subset"),
    pytest.param(lambda m: m.update(manifest_sha256="0" * 64), id="checksum-itself"),
])
def test_an_edited_manifest_fails_to_read_and_to_verify(built, edit):
    corpus, out = built
    _rewrite(out, edit)
    path = _manifest_path(out)
    with pytest.raises(shards.ManifestChecksumError, match="does not match its manifest_sha256") as err:
        shards.read_manifest(out)
    assert str(err.value).startswith(f"{path}: ")
    with pytest.raises(shards.ShardError, match="edited or damaged"):
        shards.verify(out)
    with pytest.raises(ShardFormatError, match="does not match its manifest_sha256") as err:
        ShardLoader(out, batch_size=2, substage="s64")
    assert path in str(err.value)
    rows = _verify_rows(corpus, out)
    assert [(c.status, c.path) for c in rows] == [("damaged", path)] and path in rows[0].detail
    res = CliRunner().invoke(cli, ["verify", "--corpus", corpus])
    assert res.exit_code == 1 and "damaged" in res.output and "Traceback" not in res.output
    assert "manifest_sha256" in res.output
    # a rebuild into the same folder repairs it (the edited manifest does not make it a foreign folder)
    toml = os.path.join(os.path.dirname(out), "mix.toml")
    packing.build(corpus, recipe.load(toml), out, progress=False)
    assert shards.verify(out) == []


@pytest.mark.parametrize("value", [12, None, ""])
def test_a_malformed_checksum_field_is_an_error_naming_the_file(built, value):
    corpus, out = built
    _rewrite(out, lambda m: m.update(manifest_sha256=value, plan={}))  # null is an edit, not an old manifest
    with pytest.raises(shards.ManifestChecksumError, match="must be a 64-digit lowercase hex string") as err:
        shards.read_manifest(out)
    assert _manifest_path(out) in str(err.value)
    assert [c.status for c in _verify_rows(corpus, out)] == ["damaged"]


def test_a_manifest_without_the_field_is_one_error_naming_the_rebuild(built):
    """A 0.x manifest (no manifest_sha256) is refused by its reader, the trainer's loader and `xgen verify`,
    each naming the manifest and `xgen mix build`; a rebuild into the folder replaces it."""
    corpus, out = built
    _rewrite(out, lambda m: m.pop("manifest_sha256"))
    rebuild = f"xgen mix build --corpus DIR --recipe R --out {out}"
    with pytest.raises(shards.ShardError, match="no manifest_sha256") as err:
        shards.read_manifest(out)
    assert _manifest_path(out) in str(err.value) and rebuild in str(err.value)
    with pytest.raises(ShardFormatError, match="older xgen"):
        ShardLoader(out, batch_size=2, substage="s64")
    assert [(c.status, c.path) for c in _verify_rows(corpus, out)] == [("damaged", _manifest_path(out))]
    res = CliRunner().invoke(cli, ["verify", "--corpus", corpus])
    assert res.exit_code == 1 and rebuild in res.output, res.output
    packing.build(corpus, recipe.load(os.path.join(os.path.dirname(out), "mix.toml")), out, progress=False)
    assert shards.read_manifest(out)["manifest_sha256"]


def test_copied_shards_folder_keeps_its_checksum(built, tmp_path):
    """The checksum covers the content only (paths are relative): a copied or moved folder still verifies."""
    _, out = built
    moved = str(tmp_path / "elsewhere" / "shards")
    shutil.copytree(out, moved)
    assert shards.verify(moved) == []


@pytest.mark.parametrize("field", ["split", "index_sha256"])
def test_a_0x_shard_entry_is_one_error_naming_the_rebuild(built, field):
    """A shard entry without `split` or `index_sha256` (the 0.x format), under a valid checksum, is refused."""
    corpus, out = built
    m = json.load(open(_manifest_path(out), encoding="utf-8"))
    del m["shards"][0][field]
    shards.write_manifest(out, {k: v for k, v in m.items() if k != "manifest_sha256"})
    with pytest.raises(shards.ShardError, match=f"shards\\[0\\] has no '{field}'") as err:
        shards.read_manifest(out)
    assert _manifest_path(out) in str(err.value) and f"xgen mix build --corpus DIR --recipe R --out {out}" in str(err.value)
    assert [c.status for c in _verify_rows(corpus, out)] == ["damaged"]
