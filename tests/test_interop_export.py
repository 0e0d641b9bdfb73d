"""``xgen export shards``: every target read back by its own library, token for token; blends; refusals.

The readers are the libraries themselves (megatron-core's IndexedDataset, mosaicml-streaming's
StreamingDataset, litdata's StreamingDataset + TokensLoader, datasets.load_dataset), installed from
requirements-interop.lock; without them these tests skip, unless ``XGEN_REQUIRE_INTEROP=1`` (CI).
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import sys
import types

import numpy as np
import pytest
from click.testing import CliRunner

from xgen_data.errors import DamagedDataError, RefusedError
from xgen_data.interop import card, export, mds, megatron
from xgen_data.interop import litdata as litdata_fmt
from xgen_data.interop.source import datasets
from xgen_data.shards import shard_format


def require(module: str):
    """Import an optional ``[interop]`` reader; skip without it unless XGEN_REQUIRE_INTEROP=1 (CI)."""
    if os.environ.get("XGEN_REQUIRE_INTEROP") == "1":
        return importlib.import_module(module)
    return pytest.importorskip(module)


def streaming_base():
    """mosaicml-streaming's ``streaming.base`` (StreamingDataset, Stream, MDSWriter), the real modules.

    ``streaming/__init__.py`` also imports its vision datasets, which need a torchvision built for the
    installed torch; PyPI has only CUDA builds of torchvision, which do not load beside the CPU torch. So the
    package object is created without running that ``__init__``; every module imported is streaming's own.
    """
    if "streaming.base" not in sys.modules:
        spec = importlib.util.find_spec("streaming")
        if spec is None:
            return require("streaming")
        pkg = types.ModuleType("streaming")
        pkg.__path__, pkg.__spec__ = list(spec.submodule_search_locations), spec
        sys.modules.setdefault("streaming", pkg)
    return importlib.import_module("streaming.base")


def _rows(shard_dir, ds) -> np.ndarray:
    """All rows of one exported dataset straight from the shards (manifest order)."""
    return np.concatenate([np.asarray(shard_format.open_shard(shard_dir, e)) for e in ds.entries])


@pytest.fixture(scope="module")
def sets(demo_shards):
    return datasets(shard_format.read_manifest(demo_shards))


def _export(demo_shards, tmp_path, target, **kw):
    out = str(tmp_path / target)
    return out, export.export_shards(demo_shards, out, target, **kw)


@pytest.mark.parametrize("unit", ["sequence", "document"])
def test_megatron_round_trip(demo_shards, sets, tmp_path, unit):
    idx = require("megatron.core.datasets.indexed_dataset")
    out, man = _export(demo_shards, tmp_path, "megatron", unit=unit)
    eos = man["shards"]["eos_id"]
    for ds in sets:
        want = _rows(demo_shards, ds)
        got = idx.IndexedDataset(os.path.join(out, ds.name))
        if unit == "sequence":
            assert len(got) == want.shape[0]
            assert (got.sequence_lengths == ds.seq_len).all()
            assert all(np.array_equal(got[i], want[i]) for i in range(len(got)))
        else:
            pieces = [got[i] for i in range(len(got))]
            assert np.array_equal(np.concatenate(pieces), want.reshape(-1))
            ends = np.cumsum([len(p) for p in pieces])
            assert set(ends) >= set(np.arange(1, want.shape[0] + 1) * ds.seq_len)  # no piece crosses a row
            assert all(p[-1] == eos or e % ds.seq_len == 0 for p, e in zip(pieces, ends))
            assert all((p[:-1] != eos).all() for p in pieces)  # cut after every EOS
        assert got.document_indices[-1] == len(got)
        assert got.sequence_lengths.dtype == np.int32 and got[0].dtype == np.uint16


def test_megatron_blend_file_is_the_data_path(demo_shards, tmp_path):
    out, man = _export(demo_shards, tmp_path, "megatron")
    for b in man["blends"]:
        text = open(os.path.join(out, f"{b['stage']}.data-path.txt")).read().split()
        weights, prefixes = [float(w) for w in text[0::2]], text[1::2]
        assert prefixes == [w["path"] for w in b["weights"]]
        tokens = {d["path"]: d["tokens"] for d in man["datasets"]}
        assert weights == pytest.approx([tokens[p] / sum(tokens[q] for q in prefixes) for p in prefixes], rel=1e-12)


def test_mds_round_trip_and_bytes_equal_mdswriter(demo_shards, sets, tmp_path):
    sb = streaming_base()
    out, man = _export(demo_shards, tmp_path, "mds")
    for ds in sets:
        want = _rows(demo_shards, ds)
        got = sb.StreamingDataset(local=os.path.join(out, ds.name), shuffle=False, batch_size=1,
                                  validate_hash="sha256")
        assert len(got) == want.shape[0]
        assert all(np.array_equal(got[i]["tokens"], want[i]) for i in range(len(got)))
    ds = sets[0]  # MDSWriter itself, a small size_limit so the shard cut is compared too
    ref, ours = str(tmp_path / "ref"), str(tmp_path / "ours")
    limit = 70_000
    with sb.MDSWriter(out=ref, columns={"tokens": f"ndarray:uint16:{ds.seq_len}"}, hashes=["sha256"],
                      size_limit=limit) as w:
        for row in _rows(demo_shards, ds):
            w.write({"tokens": row})
    os.makedirs(ours)
    mds.write_dataset(demo_shards, ds, ours, size_limit=limit)
    names = sorted(os.listdir(ref))
    assert len(names) > 3 and names == sorted(os.listdir(os.path.join(ours, ds.name)))
    for n in names:
        a, b = open(os.path.join(ref, n), "rb").read(), open(os.path.join(ours, ds.name, n), "rb").read()
        assert a == b, n


def test_mds_streams_with_proportions(demo_shards, tmp_path):
    """The blend as streaming Streams: an epoch draws each sub-stage's samples in the written proportion."""
    sb = streaming_base()
    out, man = _export(demo_shards, tmp_path, "mds")
    blend = man["blends"][0]
    streams = [sb.Stream(local=os.path.join(out, w["path"]), proportion=w["weight"]) for w in blend["weights"]]
    got = sb.StreamingDataset(streams=streams, epoch_size=blend["epoch_size"], shuffle=False, batch_size=1)
    assert len(got) == blend["epoch_size"] == sum(w["samples"] for w in blend["weights"])


def test_litdata_round_trip(demo_shards, sets, tmp_path, monkeypatch):
    lit = require("litdata")
    loader = require("litdata.streaming.item_loader")
    monkeypatch.setenv("DATA_OPTIMIZER_CACHE_FOLDER", str(tmp_path / "cache"))
    out, man = _export(demo_shards, tmp_path, "litdata")
    for ds in sets:
        want = _rows(demo_shards, ds)
        got = lit.StreamingDataset(os.path.join(out, ds.name), item_loader=loader.TokensLoader(block_size=ds.seq_len),
                                   shuffle=False, cache_dir=str(tmp_path / "cache" / ds.name))
        assert len(got) == want.shape[0]
        assert all(np.array_equal(got[i].numpy(), want[i]) for i in range(len(got)))


def test_litdata_chunks_equal_binarywriter(demo_shards, sets, tmp_path):
    """litdata's own BinaryWriter (TokensLoader, 100 items per chunk) writes the same chunk files."""
    torch = require("torch")
    writer = require("litdata.streaming.writer")
    loader = require("litdata.streaming.item_loader")
    ds = sets[0]
    ref = str(tmp_path / "ref")
    w = writer.BinaryWriter(ref, chunk_size=100 * ds.seq_len, item_loader=loader.TokensLoader())  # size in tokens
    for i, row in enumerate(_rows(demo_shards, ds)):
        w.add_item(i, torch.from_numpy(row.copy()))
    w.done()
    w.merge()
    ours = str(tmp_path / "ours")
    os.makedirs(ours)
    litdata_fmt.write_dataset(demo_shards, ds, ours, chunk_bytes=100 * 2 * ds.seq_len)
    theirs = json.load(open(os.path.join(ref, "index.json")))
    mine = json.load(open(os.path.join(ours, ds.name, "index.json")))
    assert len(mine["chunks"]) > 3 and mine["chunks"] == theirs["chunks"]
    for c in theirs["chunks"]:
        a = open(os.path.join(ref, c["filename"]), "rb").read()
        assert a == open(os.path.join(ours, ds.name, c["filename"]), "rb").read(), c["filename"]
    assert {k: v for k, v in mine["config"].items() if k not in ("chunk_bytes", "chunk_size")} == \
        {k: v for k, v in theirs["config"].items() if k not in ("chunk_bytes", "chunk_size")}


def test_hf_round_trip_with_card(demo_shards, sets, tmp_path):
    hfds = require("datasets")
    out, man = _export(demo_shards, tmp_path, "hf", readme=lambda m, s: card.hf_readme(demo_shards, m, s, None))
    for ds in sets:
        got = hfds.load_dataset(out, f"{ds.stage}-{ds.substage}", split=ds.split,
                                cache_dir=str(tmp_path / "hfcache"))
        want = _rows(demo_shards, ds)
        arr = np.asarray(got.with_format("numpy")["input_ids"])
        assert arr.shape == want.shape and np.array_equal(arr, want)


def test_blend_reproduces_the_stage_token_shares(demo_shards, tmp_path):
    """Each stage's blend, weights in the target's unit, gives the subset token shares of the stage's train
    split as packed (they differ from the plan's proportions only by the held-out validation sequences)."""
    manifest = shard_format.read_manifest(demo_shards)
    for target in export.TARGETS:
        out, man = _export(demo_shards, tmp_path, target, readme=lambda m, s: card.hf_configs_yaml(s))
        for st in manifest["stages"]:
            packed: dict[str, int] = {}
            for e in manifest["shards"]:
                if e["stage"] == st["name"] and e["split"] == "train":
                    for k, v in e["tokens_per_subset"].items():
                        packed[k] = packed.get(k, 0) + v
            total = sum(packed.values())
            got = export.blend_token_shares(man, st["name"])
            assert got.keys() == packed.keys()
            for k in packed:  # within 0.1%; closer, as datasets differ only in their share of EOS tokens
                assert got[k] == pytest.approx(packed[k] / total, rel=1e-4), (target, st["name"], k)


def test_same_shards_same_bytes(demo_shards, tmp_path):
    for target in ("megatron", "mds", "litdata"):
        a = export.export_shards(demo_shards, str(tmp_path / f"a-{target}"), target)
        b = export.export_shards(demo_shards, str(tmp_path / f"b-{target}"), target)
        assert a["files"] == b["files"] and a == b
        assert export.verify_export(str(tmp_path / f"a-{target}")) == []


def test_refuses_non_empty_folder_or_file(demo_shards, tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    with pytest.raises(RefusedError, match="not empty"):
        export.export_shards(demo_shards, str(full), "mds")
    assert os.listdir(full) == ["keep.txt"]
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(RefusedError, match="not a folder"):
        export.export_shards(demo_shards, str(afile), "mds")
    assert afile.read_text() == "x"
    (tmp_path / "empty").mkdir()
    export.export_shards(demo_shards, str(tmp_path / "empty"), "mds")  # an empty folder is fine


def _tree(folder) -> set[str]:
    return {os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs}


def test_an_earlier_export_is_replaced_whole_and_a_foreign_folder_refused(demo_shards, tmp_path):
    from cli.main import cli

    out = str(tmp_path / "out")

    def run(target):
        return CliRunner().invoke(cli, ["export", "shards", demo_shards, "--to", target, "--out", out,
                                        "--format", "json"])

    assert run("megatron").exit_code == 0
    r = run("litdata")  # the same command's earlier output: replaced, nothing of it left
    assert r.exit_code == 0, r.output
    man = json.loads(r.stdout)
    assert man["target"] == "litdata" and export.verify_export(out) == []
    assert _tree(out) == export.export_files(out) and not any(f.endswith(".idx") for f in _tree(out))
    with open(os.path.join(out, "notes.txt"), "w") as fh:  # a file the export did not write
        fh.write("mine")
    before = _tree(out)
    r = run("mds")
    assert r.exit_code == 2 and "notes.txt" in r.output, r.output
    assert _tree(out) == before
    os.remove(os.path.join(out, "notes.txt"))
    path = os.path.join(out, export.EXPORT_MANIFEST)
    doc = json.loads(open(path).read())
    doc["target"] = "mds"  # a manifest that no longer matches its checksum: not taken as the export's own
    with open(path, "w") as fh:
        json.dump(doc, fh)
    r = run("mds")
    assert r.exit_code == 2 and "is not an earlier shards export" in r.output, r.output
    assert export.export_files(out) is None


def test_killed_replacement_leaves_the_old_export_or_the_new(demo_shards, tmp_path):
    import subprocess

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "out"
    old = export.export_shards(demo_shards, str(out), "megatron")
    code = f"from xgen_data.interop import export; export.export_shards({demo_shards!r}, {str(out)!r}, 'litdata')"
    for point in ("before_swap", "after_backup"):
        env = dict(os.environ, XGEN_CRASH_AT=f"export_shards.{point}", PYTHONPATH=repo)
        assert subprocess.run([sys.executable, "-c", code], env=env).returncode == -9
        if point == "before_swap":  # the old export still in place, whole
            assert _export_manifest(out)["target"] == "megatron" and export.verify_export(str(out)) == []
        else:  # the old export moved aside whole: restored by the next run
            assert not out.exists() and os.path.isdir(tmp_path / ".out.backup")
    new = export.export_shards(demo_shards, str(out), "litdata")
    assert new != old and export.verify_export(str(out)) == [] and _tree(out) == export.export_files(str(out))
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".out.")]


def _export_manifest(out) -> dict:
    return json.loads((out / export.EXPORT_MANIFEST).read_text())


def test_refuses_an_out_folder_inside_the_shards_or_the_corpus(demo_shards, sample_corpus, tmp_path):
    from xgen_data.interop import card

    before = sorted(os.listdir(demo_shards))
    with pytest.raises(RefusedError, match="is inside the input"):
        export.export_shards(demo_shards, os.path.join(demo_shards, "sub"), "hf")
    with pytest.raises(RefusedError, match="is inside the input"):
        card.write_card(demo_shards, os.path.join(sample_corpus, "card"), corpus_dir=sample_corpus)
    from cli.main import cli

    for target in ("hf", "mds"):  # the corpus a --corpus names is read (hf) or checked: never written into
        r = CliRunner().invoke(cli, ["export", "shards", demo_shards, "--to", target, "--corpus", sample_corpus,
                                     "--out", os.path.join(sample_corpus, "card")])
        assert r.exit_code == 2 and f"is inside the input {sample_corpus}" in r.output, r.output
    assert sorted(os.listdir(demo_shards)) == before and not os.path.exists(os.path.join(sample_corpus, "card"))


def test_damaged_shards_refused_before_anything_is_written(demo_shards, tmp_path):
    copy = str(tmp_path / "shards")
    shutil.copytree(demo_shards, copy)
    entry = shard_format.read_manifest(copy)["shards"][-1]
    with open(os.path.join(copy, entry["path"]), "r+b") as f:
        f.seek(10)
        f.write(b"\x01\x02")
    out = tmp_path / "out"
    with pytest.raises(DamagedDataError, match=entry["path"]):
        export.export_shards(copy, str(out), "megatron")
    assert not out.exists() and not [n for n in os.listdir(tmp_path) if n.startswith(".out")]


def test_export_manifest_catches_a_changed_file(demo_shards, tmp_path):
    out, man = _export(demo_shards, tmp_path, "litdata")
    rel = next(r for r in man["files"] if r.endswith(".bin"))
    with open(os.path.join(out, rel), "r+b") as f:
        f.seek(100)
        f.write(b"\xff")
    assert any(rel in p for p in export.verify_export(out))


def test_piece_lengths_cut_at_rows_and_after_eos():
    block = np.array([[1, 9, 2, 3], [4, 5, 9, 9]], dtype=np.uint16)
    assert megatron.piece_lengths(block, 9).tolist() == [2, 2, 3, 1]


def test_killed_export_leaves_no_partial_folder(demo_shards, tmp_path):
    import subprocess

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "out"
    code = f"from xgen_data.interop import export; export.export_shards({demo_shards!r}, {str(out)!r}, 'litdata')"
    env = dict(os.environ, XGEN_CRASH_AT="export_shards.before_swap", PYTHONPATH=repo)
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == -9
    assert not out.exists()
    assert [n for n in os.listdir(tmp_path) if n.startswith(".out.tmp-")]  # the killed run's leftover
    export.export_shards(demo_shards, str(out), "litdata")
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".out.")]  # removed by the next run
    assert export.verify_export(str(out)) == []


def test_megatron_index_bytes_by_the_format(tmp_path):
    """The .idx written in chunks equals the layout of megatron-core's _IndexWriter, computed whole."""
    lengths = np.array([3, 1, 4, 1, 5] * 130_000, dtype=np.int32)  # more than one chunk
    with open(tmp_path / "lengths", "w+b") as f, megatron.HashingWriter(str(tmp_path), "x.idx") as w:
        f.write(lengths.tobytes())
        megatron.write_index(w, f, lengths.size)
        w.close()
    pointers = np.concatenate([[0], np.cumsum(lengths.astype(np.int64) * 2)[:-1]])
    import struct

    want = (b"MMIDIDX\x00\x00" + struct.pack("<QBQQ", 1, 8, lengths.size, lengths.size + 1) + lengths.tobytes()
            + pointers.astype("<i8").tobytes() + np.arange(lengths.size + 1, dtype="<i8").tobytes())
    assert (tmp_path / "x.idx").read_bytes() == want
