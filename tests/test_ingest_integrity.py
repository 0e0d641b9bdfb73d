"""Ingest hardening: nested folders, duplicate ids (both modes, collisions), truncated streams, full disk, repair."""
import errno
import gzip
import json
import os
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from click.testing import CliRunner
from conftest import shared_path

from cli.main import cli
from xgen_data.sources import idindex, ingest, readers
from xgen_data.stats import sql
from xgen_data.store import fsutil
from xgen_data.store.corpus import Corpus


def _lines(name="code.jsonl", n=20):
    with open(shared_path("corpus", "sample", name), encoding="utf-8") as f:
        return [line for _, line in zip(range(n), f)]


def _jsonl(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _invoke(args):
    """Invoke the CLI; an exception other than click's own exit would be a traceback for the user."""
    res = CliRunner().invoke(cli, args)
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    return res


def _ids(root, subset=None):
    q = "SELECT id FROM documents" + (f" WHERE subset = '{subset}'" if subset else "") + " ORDER BY id"
    return [r[0] for r in sql.connect(root).execute(q).fetchall()]


# -- folders -----------------------------------------------------------------------------------------------
def test_folders_are_read_recursively_and_skips_are_listed(tmp_path):
    raw = tmp_path / "raw"
    lines = _lines(n=12)
    (raw / "sub" / "deeper").mkdir(parents=True)
    (raw / "top.jsonl").write_text("".join(lines[:4]))
    (raw / "sub" / "mid.jsonl.gz").write_bytes(gzip.compress("".join(lines[4:8]).encode()))
    (raw / "sub" / "deeper" / "low.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress("".join(lines[8:]).encode()))
    (raw / ".git").mkdir()
    (raw / ".git" / "x.jsonl").write_text(lines[0])
    (raw / ".hidden.jsonl").write_text(lines[0])
    (raw / "notes.txt").write_text("x")
    (raw / "sub" / "table.csv").write_text("a,b")
    corpus = raw / "corpus"  # the corpus inside the folder read must not be read back
    res = _invoke(["ingest", "--corpus", str(corpus), "--quiet", "--subset", "code", str(raw)])
    assert res.exit_code == 0, res.output
    assert "2 files with an unsupported extension (.csv, .txt" in res.output
    assert "1 hidden folder:" in res.output and ".git" in res.output and "1 hidden file:" in res.output
    assert "sub/deeper/low.jsonl.zst" in res.output  # the report shows paths relative to the folder
    assert len(_ids(str(corpus))) == 12
    entries = Corpus(str(corpus)).read_meta()["inputs"].values()
    assert sorted(e["rel_path"] for e in entries) == ["sub/deeper/low.jsonl.zst", "sub/mid.jsonl.gz", "top.jsonl"]
    assert {e["folder"] for e in entries} == {str(raw)}
    # a second run skips the corpus folder itself and finds nothing new
    res = _invoke(["ingest", "--corpus", str(corpus), "--quiet", "--subset", "code", str(raw)])
    assert res.exit_code == 0 and "1 folder of the corpus being written: " in res.output and res.output.count("unchanged") == 3


def test_find_inputs_refuses_an_empty_folder_and_skips_folder_links(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="no .jsonl.*also in sub-folders"):
        ingest.find_inputs([str(tmp_path / "empty")])
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.jsonl").write_text('{"text": "a"}\n')
    os.symlink(tmp_path / "d", tmp_path / "d" / "loop")
    files, skipped = ingest.find_inputs([str(tmp_path / "d")])
    assert [f.rel for f in files] == ["a.jsonl"]
    assert skipped == [(str(tmp_path / "d" / "loop"), "link to a folder (not followed)")]


# -- duplicate ids -----------------------------------------------------------------------------------------
def _dup_file(tmp_path, n=600, dup_of=3, at=550):
    recs = [{"id": f"doc-{i}", "text": f"document number {i}"} for i in range(n)]
    recs.insert(at, {"id": f"doc-{dup_of}", "text": "another text with the same id"})
    return _jsonl(tmp_path / "dups.jsonl", recs)


@pytest.mark.parametrize("at,part_docs", [(5, 16384), (550, 16384), (550, 100)],
                         ids=["same-batch", "later-batch", "closed-part"])
def test_duplicate_id_in_one_file_raise_names_both_lines(tmp_path, monkeypatch, at, part_docs):
    monkeypatch.setattr(ingest, "PART_DOCS", part_docs)
    src = _dup_file(tmp_path, at=at)
    root = str(tmp_path / "c")
    with pytest.raises(readers.RecordError, match=rf"dups.jsonl:{at + 1}: duplicate id 'doc-3' \(first at .*dups.jsonl:4;"):
        ingest.ingest(root, [(str(src), "web")], workers=1, progress=False)
    assert not Corpus(root).parts() and not [f for _, _, fs in os.walk(root) for f in fs if ".tmp" in f]
    rep = ingest.ingest(root, [(str(src), "web")], workers=1, on_error="skip", progress=False)[0]
    assert rep.n_written == 600 and rep.skipped == {"duplicate_id": 1}
    assert rep.examples == [f"{src}:{at + 1}: duplicate id 'doc-3' (first at {src}:4)"]
    assert len(set(_ids(root))) == 600
    text = sql.connect(root).execute("SELECT text FROM documents WHERE id = 'doc-3'").fetchall()
    assert text == [("document number 3",)]  # the first one is kept


def test_duplicate_id_across_files_names_the_earlier_file_and_line(tmp_path):
    a = _jsonl(tmp_path / "a.jsonl", [{"id": "x", "text": "one"}, {"id": "y", "text": "two"}])
    b = _jsonl(tmp_path / "b.jsonl", [{"id": "z", "text": "three"}, {"id": "y", "text": "other"}])
    root = str(tmp_path / "c")
    res = _invoke(["ingest", "--corpus", root, "--quiet", "--subset", "s", str(a), str(b)])
    assert res.exit_code == 3 and "Traceback" not in res.output
    assert f"b.jsonl:2: duplicate id 'y' (first at {a}:2;" in res.output
    assert _ids(root) == ["x", "y"]  # a.jsonl was committed, nothing of b.jsonl
    res = _invoke(["ingest", "--corpus", root, "--quiet", "--subset", "s", "--on-error", "skip", str(b)])
    assert res.exit_code == 0 and "duplicate_id=1" in res.output
    assert f"b.jsonl:2: duplicate id 'y' (first at {a} (corpus part a-" in res.output
    assert _ids(root) == ["x", "y", "z"]
    # the same ids in another subset are not duplicates
    assert ingest.ingest(root, [(str(b), "other")], workers=1, progress=False)[0].n_written == 2


def test_hash_collisions_never_drop_a_document(tmp_path, monkeypatch):
    """Every id hashes to 0: only the real duplicate is dropped, every other id is confirmed distinct."""
    monkeypatch.setattr(idindex, "hash_ids", lambda ids: np.zeros(len(ids), dtype=np.uint64))
    src = _dup_file(tmp_path, n=300, at=200)
    root = str(tmp_path / "c")
    rep = ingest.ingest(root, [(str(src), "web")], workers=1, on_error="skip", progress=False)[0]
    assert rep.n_written == 300 and rep.skipped == {"duplicate_id": 1}
    assert _ids(root) == sorted(f"doc-{i}" for i in range(300))


def test_id_index_matches_a_set_and_costs_16_bytes_per_id():
    rng = np.random.default_rng(0)
    index, known = idindex.IdIndex(), set()
    for k in range(40):
        h = rng.integers(0, 5000, size=int(rng.integers(1, 300)), dtype=np.uint64)
        index.add(h, k, np.arange(len(h)))
        known.update(h.tolist())
    assert len(index._runs) <= 12  # runs are merged (log-structured), not one per batch
    q = np.arange(6000, dtype=np.uint64)
    assert index.maybe_contains(q).tolist() == [int(x) in known for x in q]
    assert index.nbytes == 16 * len(index)
    some = next(iter(known))
    assert all(index.candidates(some)) and index.candidates(99999) == []
    hashes = idindex.hash_ids(pa.array(["a", "b", "a"]))
    assert hashes.dtype == np.uint64 and hashes[0] == hashes[2] != hashes[1]


def test_id_index_spills_to_disk_and_still_matches_a_set(tmp_path):
    rng = np.random.default_rng(1)
    spill = str(tmp_path / "spill")
    index, known, where = idindex.IdIndex(spill_dir=spill, memory_entries=500), set(), {}
    for k in range(40):
        h = rng.integers(0, 5000, size=int(rng.integers(1, 300)), dtype=np.uint64)
        index.add(h, k, np.arange(len(h)))
        known.update(h.tolist())
        for row, x in enumerate(h.tolist()):
            where.setdefault(x, []).append((k, row))
        assert index.nbytes <= 16 * (500 + 300)  # memory bounded, whatever was added
    assert index.disk_runs >= 5 and len(index) == sum(len(v) for v in where.values())
    q = np.arange(6000, dtype=np.uint64)
    assert index.maybe_contains(q).tolist() == [int(x) in known for x in q]
    for x in list(known)[:200]:
        assert index.candidates(x) == where[x]  # every entry, oldest first, across disk and memory runs
    assert index.candidates(99999) == []
    index.close()
    assert not os.path.exists(spill)  # the index made the folder: it goes with the runs


@pytest.mark.parametrize("collide", [False, True])
def test_duplicate_ids_found_across_parts_and_spilled_runs(tmp_path, monkeypatch, collide):
    """Planted duplicates (against an earlier input's parts, within the same input, across its parts) are
    found with the index spilled to disk after every 50 ids; with all hashes equal nothing else is dropped."""
    monkeypatch.setattr(idindex, "MEMORY_ENTRIES", 50)
    monkeypatch.setattr(ingest, "PART_DOCS", 256)
    if collide:
        monkeypatch.setattr(idindex, "hash_ids", lambda ids: np.zeros(len(ids), dtype=np.uint64))
    n = 150 if collide else 700
    a = _jsonl(tmp_path / "a.jsonl", [{"id": f"a-{i}", "text": f"first {i}"} for i in range(n)])
    dups = {3: "a-5", n // 2: f"a-{n - 1}", n - 10: "b-1", n - 2: "b-300"}  # row in b -> the id it repeats
    b = _jsonl(tmp_path / "b.jsonl", [{"id": dups.get(i, f"b-{i}"), "text": f"second {i}"} for i in range(n)])
    root = str(tmp_path / "c")
    ingest.ingest(root, [(str(a), "s")], workers=1, progress=False)
    rep = ingest.ingest(root, [(str(b), "s")], workers=1, on_error="skip", progress=False)[0]
    expect = {k: v for k, v in dups.items() if v != "b-300" or n > 300}
    assert rep.skipped == {"duplicate_id": len(expect)}, rep.examples
    ids = _ids(root)
    assert len(ids) == len(set(ids)) == 2 * n - len(expect)
    assert not os.path.exists(os.path.join(root, "work", "idindex"))  # spilled runs are removed after the input
    with pytest.raises(readers.RecordError, match="duplicate id 'a-5'"):
        ingest.ingest(str(tmp_path / "d"), [(str(a), "s"), (str(b), "s")], workers=1, progress=False)


# -- truncated streams, full disk ----------------------------------------------------------------------------
def _complete_lines(data: bytes, fmt: str) -> int:
    if fmt == "jsonl.gz":
        out = zlib.decompressobj(wbits=31).decompress(data)
    else:
        out = zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return out.count(b"\n")


@pytest.mark.parametrize("fmt", ["jsonl.gz", "jsonl.zst"])
def test_truncated_stream_names_the_last_good_line(tmp_path, fmt):
    data = "".join(_lines("nl.jsonl", 200)).encode()
    packed = gzip.compress(data) if fmt == "jsonl.gz" else zstandard.ZstdCompressor(level=1).compress(data)
    cut = packed[: len(packed) * 2 // 3]
    good = _complete_lines(cut, fmt)
    assert good > 10
    src = tmp_path / f"nl.{fmt}"
    src.write_bytes(cut)
    with pytest.raises(readers.RecordError) as err:
        ingest.ingest(str(tmp_path / "c"), [(str(src), None)], workers=1, progress=False)
    assert f"nl.{fmt}:{good + 1}: corrupt or truncated {fmt} stream; the last good line is {good}" in str(err.value)
    assert sum(1 for _ in _raw_until_error(str(src))) == good


def _truncated_copy(tmp_path, fmt, name="code.jsonl", n=60, bad_line=None):
    """The first ``n`` records of a shared sample file, compressed with ``fmt`` and cut at two thirds of its
    bytes (line ``bad_line``, 1-based, replaced by malformed JSON); returns (path, complete lines kept)."""
    lines = _lines(name, n)
    if bad_line is not None:
        lines[bad_line - 1] = "{not json\n"
    data = "".join(lines).encode()
    packed = gzip.compress(data) if fmt == "jsonl.gz" else zstandard.ZstdCompressor(level=3).compress(data)
    cut = packed[: len(packed) * 2 // 3]
    good = _complete_lines(cut, fmt)
    assert 5 < good < n
    src = tmp_path / "raw" / f"{name.split('.')[0]}.{fmt}"
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_bytes(cut)
    return src, good


def _part_ids(root, subset):
    """The ids of a subset's parts in part and row order (the input's order)."""
    return [i for p in sorted(Corpus(str(root)).parts(), key=lambda p: p.name) if p.subset == subset
            for i in pq.read_table(p.path, columns=["id"]).column("id").to_pylist()]


@pytest.mark.parametrize("fmt", ["jsonl.gz", "jsonl.zst"])
def test_truncated_stream_under_skip_keeps_the_records_before_and_goes_on(tmp_path, fmt):
    src, good = _truncated_copy(tmp_path, fmt, bad_line=3)
    nxt = _jsonl(tmp_path / "raw" / "instruct.jsonl", [json.loads(x) for x in _lines("instruct.jsonl", 12)])
    root = tmp_path / "c"
    res = _invoke(["ingest", "--corpus", str(root), "--on-error", "skip", "--quiet", str(src), str(nxt)])
    assert res.exit_code == 0, res.output
    assert "malformed_json=1, truncated_stream=1" in res.output
    assert f"skipped: {src}:3: malformed JSON" in res.output
    assert (f"skipped: {src}:{good + 1}: corrupt or truncated {fmt} stream; the last good line is {good}: "
            "stream ends in the middle of a") in res.output
    assert "the rest of the file is skipped" in res.output
    want = [json.loads(x)["id"] for k, x in enumerate(_lines("code.jsonl", good), 1) if k != 3]
    assert _part_ids(root, "code") == want  # every complete record before the break, in order
    assert len(_part_ids(root, "instruct")) == 12  # the next file was ingested
    entry = next(v for v in Corpus(str(root)).read_meta()["inputs"].values() if v["subset"] == "code")
    assert entry["n_docs"] == good - 1 and entry["skipped"] == {"malformed_json": 1, "truncated_stream": 1}
    assert sql.connect(str(root), quiet=True).execute("SELECT count(*) FROM documents").fetchone()[0] == good - 1 + 12


@pytest.mark.parametrize("fmt", ["jsonl.gz", "jsonl.zst"])
def test_truncated_stream_by_default_names_file_and_line_and_leaves_the_corpus_as_it_was(tmp_path, fmt):
    src, good = _truncated_copy(tmp_path, fmt)
    root = tmp_path / "c"
    first = _jsonl(tmp_path / "raw" / "instruct.jsonl", [json.loads(x) for x in _lines("instruct.jsonl", 12)])
    ingest.ingest(str(root), [(str(first), None)], workers=1, progress=False)

    def state():
        return open(root / "corpus.json", "rb").read(), sorted(
            os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)

    before = state()
    with pytest.raises(readers.StreamError) as err:
        ingest.ingest(str(root), [(str(src), None)], workers=1, progress=False)
    assert err.value.file == str(src) and err.value.line == good + 1 and err.value.truncated
    assert str(err.value).startswith(f"{src}:{good + 1}: corrupt or truncated {fmt} stream")
    assert "nothing of this file was ingested" in str(err.value)
    assert state() == before
    res = _invoke(["ingest", "--corpus", str(root), "--quiet", str(src)])
    assert res.exit_code == 3 and "Traceback" not in res.output
    assert f"{src}:{good + 1}: corrupt or truncated {fmt} stream; the last good line is {good}" in res.output
    assert state() == before and _part_ids(root, "code") == []


def _raw_until_error(path):
    try:
        yield from readers.iter_raw(path)
    except readers.RecordError:
        return


class _FullDiskWriter(pq.ParquetWriter):
    def write_batch(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_names_the_part_being_written(tmp_path, monkeypatch):
    monkeypatch.setattr(ingest.pq, "ParquetWriter", _FullDiskWriter)
    root = tmp_path / "c"
    res = _invoke(["ingest", "--corpus", str(root), "--quiet", shared_path("corpus", "sample", "code.jsonl")])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "No space left on device" in res.output and "free disk space" in res.output
    assert f"corpus part {root}/docs/code/code-" in res.output and ".parquet" in res.output
    assert not Corpus(str(root)).parts() and not [f for _, _, fs in os.walk(root) for f in fs if ".tmp" in f]


def test_full_disk_on_the_registry_names_corpus_json(tmp_path, monkeypatch):
    root = tmp_path / "c"
    Corpus(str(root), create=True)

    def full(self, meta):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Corpus, "write_meta", full)
    with pytest.raises(OSError, match=f"cannot write {root}/corpus.json: No space left"):
        ingest.ingest(str(root), [(shared_path("corpus", "sample", "code.jsonl"), None)], workers=1, progress=False)


# -- repair ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["flip", "delete"])
def test_reingest_repairs_damaged_parts(tmp_path, damage):
    src = shared_path("corpus", "sample", "code.jsonl")
    root = str(tmp_path / "c")
    ingest.ingest(root, [(src, None)], workers=1, progress=False)
    con = sql.connect(root)
    before = con.execute("SELECT id, text, n_tokens FROM documents ORDER BY id").fetchall()
    part = Corpus(root).parts("code")[0].path
    recorded = next(iter(Corpus(root).read_meta()["inputs"].values()))["part_sha256"]
    if damage == "flip":
        data = bytearray(open(part, "rb").read())
        data[len(data) // 2] ^= 0x01
        open(part, "wb").write(bytes(data))
    else:
        os.remove(part)
    rep = ingest.ingest(root, [(src, None)], workers=1, progress=False)[0]
    assert rep.status == "repaired"
    assert os.path.basename(part) in rep.examples[0] and ("missing" if damage == "delete" else "sha256 differs") in rep.examples[0]
    entry = next(iter(Corpus(root).read_meta()["inputs"].values()))
    assert entry["part_sha256"] == recorded == {os.path.basename(part): fsutil.sha256_file(part)}
    assert sql.connect(root).execute("SELECT id, text, n_tokens FROM documents ORDER BY id").fetchall() == before
    assert ingest.ingest(root, [(src, None)], workers=1, progress=False)[0].status == "unchanged"


@pytest.mark.parametrize("fmt", ["jsonl.gz", "jsonl.zst"])
def test_empty_compressed_file_is_a_truncated_stream(tmp_path, fmt):
    # a 0-byte .gz / .zst holds no member at all (gzip -t rejects it): a cut download, never an empty corpus
    src = tmp_path / "raw" / f"code.{fmt}"
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_bytes(b"")
    root = tmp_path / "c"
    res = _invoke(["ingest", "--corpus", str(root), str(src)])
    assert res.exit_code != 0
    assert f"{src}:1: corrupt or truncated {fmt} stream; no complete line could be read: empty file" in res.output
    nxt = _jsonl(tmp_path / "raw" / "instruct.jsonl", [json.loads(x) for x in _lines("instruct.jsonl", 5)])
    res = _invoke(["ingest", "--corpus", str(root), "--on-error", "skip", "--quiet", str(src), str(nxt)])
    assert res.exit_code == 0, res.output
    assert "truncated_stream=1" in res.output and len(_part_ids(root, "instruct")) == 5
