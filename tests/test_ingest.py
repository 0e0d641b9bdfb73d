"""Corpus manager: ingest formats, idempotence, bad input (file and line named, or counted with skip)."""
import gzip
import hashlib
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from click.testing import CliRunner
from conftest import shared_path

from xgen_data import tokenizer
from xgen_data.errors import InputError
from xgen_data.sources import ingest, readers
from xgen_data.stats import sql
from xgen_data.store.corpus import Corpus, CorpusError


def _sample_lines(name="code.jsonl", n=30):
    with open(shared_path("corpus", "sample", name), encoding="utf-8") as f:
        return [line for _, line in zip(range(n), f)]


def _docs(corpus_dir, subset):
    con = sql.connect(corpus_dir)
    return con.execute(f"SELECT id, n_tokens, n_chars FROM documents WHERE subset = '{subset}' ORDER BY id").fetchall()


def test_sample_corpus_has_all_fields_and_tokens(sample_corpus):
    con = sql.connect(sample_corpus)
    rows = con.execute("SELECT subset, count(*), sum(n_tokens) FROM documents GROUP BY subset ORDER BY subset").fetchall()
    counts = {r[0]: r[1] for r in rows}
    assert counts == {"code": 73, "instruct": 586, "natural": 457}
    rec = json.loads(_sample_lines("nl.jsonl", 1)[0])
    doc = con.execute("SELECT id, text, source, license, language, path, meta, n_tokens FROM documents WHERE id = ?",
                      [rec["id"]]).fetchone()
    assert doc[:6] == (rec["id"], rec["text"], rec["source"], rec["license"], rec["language"], rec["path"])
    assert json.loads(doc[6]) == rec["meta"]
    assert doc[7] == len(tokenizer.encode(rec["text"]))
    part = Corpus(sample_corpus).parts("natural")[0]
    t = pq.read_table(part.path, columns=["tokens", "n_tokens"]).slice(0, 5)
    for toks, n in zip(t["tokens"].to_pylist(), t["n_tokens"].to_pylist()):
        assert len(toks) == n
    assert pq.ParquetFile(part.path).metadata.row_group(0).column(0).compression == "ZSTD"


@pytest.mark.parametrize("fmt", ["jsonl", "jsonl.gz", "jsonl.zst", "parquet"])
def test_all_input_formats_give_the_same_documents(tmp_path, fmt):
    lines = _sample_lines()
    src = tmp_path / f"code.{fmt}"
    data = "".join(lines).encode()
    if fmt == "jsonl":
        src.write_bytes(data)
    elif fmt == "jsonl.gz":
        src.write_bytes(gzip.compress(data))
    elif fmt == "jsonl.zst":
        src.write_bytes(zstandard.ZstdCompressor().compress(data))
    else:
        recs = [json.loads(x) for x in lines]
        for r in recs:
            r["meta"] = json.dumps(r["meta"])
        pq.write_table(pa.Table.from_pylist(recs), src)
    ingest.ingest(str(tmp_path / "c"), [(str(src), None)], workers=1, progress=False)
    ref = tmp_path / "ref.jsonl"
    ref.write_bytes(data)
    ingest.ingest(str(tmp_path / "r"), [(str(ref), "code")], workers=1, progress=False)
    assert _docs(str(tmp_path / "c"), "code") == _docs(str(tmp_path / "r"), "code")
    assert len(_docs(str(tmp_path / "c"), "code")) == len(lines)


def test_rerun_does_not_duplicate(tmp_path):
    src = shared_path("corpus", "sample", "code.jsonl")
    root = str(tmp_path / "c")
    first = ingest.ingest(root, [(src, None)], workers=1, progress=False)[0]
    again = ingest.ingest(root, [(src, None)], workers=1, progress=False)[0]
    assert again.status == "unchanged"
    assert len(_docs(root, "code")) == first.n_written == 73
    # Identical bytes under another name are recognised by content hash.
    copy = tmp_path / "code_copy.jsonl"
    copy.write_bytes(open(src, "rb").read())
    assert ingest.ingest(root, [(str(copy), "code")], workers=1, progress=False)[0].status == "unchanged"
    # Another file repeating the same ids plus one new document: an error naming both files and lines (raise);
    # with skip, only the new one is added and the duplicates are counted with both places.
    copy.write_bytes(open(src, "rb").read() + b'{"id": "new-doc", "text": "x = 1"}\n')
    with pytest.raises(readers.RecordError, match=r"code_copy.jsonl:1: duplicate id .* \(first at .*/code.jsonl:1;"):
        ingest.ingest(root, [(str(copy), "code")], workers=1, progress=False)
    assert len(_docs(root, "code")) == 73
    rep = ingest.ingest(root, [(str(copy), "code")], workers=1, on_error="skip", progress=False)[0]
    assert rep.n_written == 1 and rep.skipped["duplicate_id"] == 73
    assert "code_copy.jsonl:2: duplicate id" in rep.examples[1] and "code.jsonl (corpus part" in rep.examples[1]
    assert len(_docs(root, "code")) == 74


def test_changed_file_replaces_its_documents(tmp_path):
    lines = _sample_lines(n=10)
    src = tmp_path / "code.jsonl"
    src.write_text("".join(lines))
    root = str(tmp_path / "c")
    ingest.ingest(root, [(str(src), None)], workers=1, progress=False)
    src.write_text("".join(lines[:4]))
    rep = ingest.ingest(root, [(str(src), None)], workers=1, progress=False)[0]
    assert rep.status == "replaced"
    assert len(_docs(root, "code")) == 4
    assert len(Corpus(root).parts("code")) == 1


def _bad_file(tmp_path, bad_line: bytes, name="bad.jsonl"):
    lines = [x.encode() for x in _sample_lines(n=5)]
    lines.insert(2, bad_line + b"\n")
    p = tmp_path / name
    p.write_bytes(b"".join(lines))
    return p


@pytest.mark.parametrize("bad,problem,kind", [
    (b'{"id": "x", "text": "unterminated', "malformed JSON", "malformed_json"),
    (b'{"id": "x", "source": "s"}', "missing 'text'", "missing_text"),
    (b'{"id": "x", "text": "caf\xe9"}', "invalid UTF-8", "invalid_utf-8"),
    (b'{"id": "x", "text": "lone \\ud800 surrogate"}', "invalid UTF-8", "invalid_utf-8"),
    (b'{"id": "x", "text": 42}', "'text' is int", "invalid_record"),
    (b'[1, 2, 3]', "record is a JSON list, expected an object", "invalid_record"),
])
@pytest.mark.parametrize("workers", [1, 2])
def test_bad_records_name_file_and_line(tmp_path, bad, problem, kind, workers):
    src = _bad_file(tmp_path, bad)
    root = str(tmp_path / "c")
    with pytest.raises(readers.RecordError) as err:
        ingest.ingest(root, [(str(src), "code")], workers=workers, progress=False)
    assert f"bad.jsonl:3: {problem}" in str(err.value)
    assert not Corpus(root).parts(), "nothing of a failed file may be kept"
    assert not [f for _, _, fs in os.walk(root) for f in fs if ".tmp" in f]
    rep = ingest.ingest(root, [(str(src), "code")], workers=workers, on_error="skip", progress=False)[0]
    assert rep.n_written == 5 and dict(rep.skipped) == {kind: 1}
    assert "bad.jsonl:3" in rep.examples[0]


@pytest.mark.parametrize("payload,message", [
    (b'{"text": "unterminated', "malformed JSON: Unterminated string starting at column 10"),
    (b'{"text": "tab\there"}', "malformed JSON: Invalid control character at column 14"),
    (b'{"text": "ok"} x', "malformed JSON: Extra data at column 16"),
    (b'{"text": "\xc3\xa9", x}\n', "malformed JSON: Expecting property name enclosed in double quotes at column 15"),
    (b'{"text": "ok"\r\n', "malformed JSON: Expecting ',' delimiter at the end of the line"),
])
def test_malformed_json_names_the_column_once(payload, message):
    with pytest.raises(readers.RecordError) as err:
        readers.decode_record(readers.RawRecord("bad.jsonl", 3, payload))
    assert str(err.value) == f"bad.jsonl:3: {message}"


def test_corrupt_compressed_stream_is_named(tmp_path):
    src = tmp_path / "broken.jsonl.zst"
    src.write_bytes(zstandard.ZstdCompressor().compress("".join(_sample_lines()).encode())[:-50])
    with pytest.raises(readers.RecordError, match="broken.jsonl.zst"):
        ingest.ingest(str(tmp_path / "c"), [(str(src), "code")], workers=1, progress=False)


def test_unsupported_and_missing_inputs(tmp_path):
    with pytest.raises(ValueError, match="unsupported input"):
        ingest.ingest(str(tmp_path / "c"), [(str(tmp_path / "x.csv"), None)], progress=False)
    with pytest.raises(InputError, match="nope.jsonl: no such input file"):
        ingest.ingest(str(tmp_path / "c"), [(str(tmp_path / "nope.jsonl"), None)], progress=False)


def test_cli_ingest_error_and_skip(tmp_path):
    from cli.main import cli

    src = _bad_file(tmp_path, b"{oops")
    runner = CliRunner()
    res = runner.invoke(cli, ["ingest", "--corpus", str(tmp_path / "c"), "--quiet", str(src)])
    assert res.exit_code == 3 and "bad.jsonl:3: malformed JSON" in res.output
    res = runner.invoke(cli, ["ingest", "--corpus", str(tmp_path / "c"), "--quiet", "--on-error", "skip", str(src)])
    assert res.exit_code == 0, res.output
    assert "malformed_json=1" in res.output and "bad.jsonl:3" in res.output


def test_records_without_id_from_same_named_files_are_all_kept(tmp_path):
    for d, words in (("2023", "alpha beta"), ("2024", "gamma delta")):
        (tmp_path / d).mkdir()
        (tmp_path / d / "data.jsonl").write_text("".join(
            json.dumps({"text": f"{words} {i}"}) + "\n" for i in range(5)))
    root = str(tmp_path / "c")
    reps = ingest.ingest(root, [(str(tmp_path / d / "data.jsonl"), "web") for d in ("2023", "2024")],
                         workers=1, progress=False, id_from="line")
    assert [r.n_written for r in reps] == [5, 5]
    ids = [r[0] for r in _docs(root, "web")]
    assert len(set(ids)) == 10 and all(i.startswith("data#") for i in ids)


def test_a_record_without_id_is_an_error_unless_id_from_makes_one(tmp_path):
    from cli.main import cli

    src = tmp_path / "raw" / "web.jsonl"
    src.parent.mkdir()
    src.write_text(json.dumps({"id": "a", "text": "first"}) + "\n" + json.dumps({"text": "second"}) + "\n"
                   + json.dumps({"text": "second"}) + "\n")
    with pytest.raises(readers.RecordError, match=rf"{src}:2: missing 'id' \(give every record an id, or make one "
                                                  "with --id-from line or --id-from sha256\)"):
        ingest.ingest(str(tmp_path / "c"), [(str(src), None)], workers=1, progress=False)
    res = CliRunner().invoke(cli, ["ingest", "--corpus", str(tmp_path / "c"), "--quiet", "--on-error", "skip", str(src)])
    assert res.exit_code == 0 and "missing_id=2" in res.output and f"{src}:2: missing 'id'" in res.output
    res = CliRunner().invoke(cli, ["ingest", "--corpus", str(tmp_path / "c2"), "--quiet", "--id-from", "sha256",
                                   "--on-error", "skip", str(src)])
    assert res.exit_code == 0 and "duplicate_id=1" in res.output, res.output  # line 3 repeats line 2's text
    assert [r[0] for r in _docs(str(tmp_path / "c2"), "web")] == [
        "a", "sha256:" + hashlib.sha256(b"second").hexdigest()]


@pytest.mark.parametrize("bad,problem", [
    (b'{"id": "x\\ud800", "text": "ok"}', "invalid UTF-8 in 'id'"),
    (b'{"text": "ok", "meta": {"k": "\\udfff"}}', "invalid UTF-8 in 'meta'"),
    (b'{"text": "ok", "meta": ' + b"[" * 100000 + b"]" * 100000 + b"}", "malformed JSON: nested too deeply"),
    (b'{"text": "ok", "meta": {"x": ' + b"9" * 5000 + b"}}", "unreadable JSON value: Exceeds the limit"),
    (b'{"text": "ok", "meta": {"x": NaN}}', "'meta' cannot be stored as JSON: Out of range float"),
    (b'{"text": "ok", "meta": "{\\"x\\": Infinity}"}', "'meta' cannot be stored as JSON: Out of range float"),
    (b'{"text": null}', "'text' is null"),
    (b'{"id": "", "text": "ok"}', "'id' is '': an id must not be empty"),
    (b'{"id": "  ", "text": "ok"}', "'id' is '  ': an id must not be empty"),
])
def test_more_bad_records_are_named_and_skippable(tmp_path, bad, problem):
    src = _bad_file(tmp_path, bad)
    with pytest.raises(readers.RecordError, match=f"bad.jsonl:3: {problem}"):
        ingest.ingest(str(tmp_path / "c"), [(str(src), "code")], workers=1, progress=False)
    rep = ingest.ingest(str(tmp_path / "c"), [(str(src), "code")], workers=1, on_error="skip", progress=False)[0]
    assert rep.n_written == 5 and sum(rep.skipped.values()) == 1


def test_bom_and_crlf(tmp_path):
    src = tmp_path / "bom.jsonl"
    src.write_bytes(b"\xef\xbb\xbf" + b"".join(x.encode().rstrip(b"\n") + b"\r\n" for x in _sample_lines(n=3)))
    rep = ingest.ingest(str(tmp_path / "c"), [(str(src), "code")], workers=1, progress=False)[0]
    assert rep.n_written == 3 and not rep.skipped


def test_corrupt_gzip_and_parquet_are_named(tmp_path):
    data = gzip.compress("".join(_sample_lines()).encode())
    src = tmp_path / "mid.jsonl.gz"
    src.write_bytes(data[:200] + bytes(b ^ 0x55 for b in data[200:400]) + data[400:])
    # damaged bytes (unlike a cut file): what was decoded before the damage may be wrong, so skip stops too
    with pytest.raises(readers.StreamError, match=r"mid.jsonl.gz:\d+: corrupt or truncated jsonl.gz stream.*even "
                                                  "with --on-error skip") as err:
        ingest.ingest(str(tmp_path / "c"), [(str(src), "code")], workers=1, on_error="skip", progress=False)
    assert not err.value.truncated
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet at all" * 10)
    with pytest.raises(readers.RecordError, match="junk.parquet:1: corrupt Parquet"):
        ingest.ingest(str(tmp_path / "c"), [(str(junk), "code")], workers=1, progress=False)


def test_parquet_meta_with_timestamps(tmp_path):
    import datetime

    src = tmp_path / "ts.parquet"
    pq.write_table(pa.table({"id": ["t"], "text": ["hello world"], "meta": [{"when": datetime.datetime(2024, 1, 2)}]}),
                   src)
    rep = ingest.ingest(str(tmp_path / "c"), [(str(src), "x")], workers=1, progress=False)[0]
    assert rep.n_written == 1
    meta = sql.connect(str(tmp_path / "c")).execute("SELECT meta FROM documents").fetchone()[0]
    assert "2024-01-02" in meta


def test_bad_ranks_file_fails_before_workers(tmp_path, monkeypatch):
    monkeypatch.setenv(tokenizer.ENV_RANKS, str(tmp_path / "missing.tiktoken"))
    tokenizer.get_encoding.cache_clear()
    try:
        with pytest.raises(tokenizer.TokenizerError, match="missing.tiktoken"):
            ingest.ingest(str(tmp_path / "c"), [(shared_path("corpus", "sample", "code.jsonl"), None)], workers=2,
                          progress=False)
    finally:
        tokenizer.get_encoding.cache_clear()


def test_crash_leftovers_are_invisible_and_cleaned(tmp_path):
    """A part renamed into place but never registered (crash) is not a document; the next ingest removes it."""
    root = tmp_path / "c"
    src = tmp_path / "code.jsonl"
    src.write_text("".join(_sample_lines(n=6)))
    ingest.ingest(str(root), [(str(src), None)], workers=1, progress=False)
    part = next((root / "docs" / "code").glob("*.parquet"))
    orphan = part.with_name("code-deadbeef-00000.parquet")
    orphan.write_bytes(part.read_bytes())
    tmp_left = part.with_name(".code-x-00000.parquet.tmp-123")
    tmp_left.write_bytes(b"half")
    assert len(_docs(str(root), "code")) == 6
    src.write_text("".join(_sample_lines(n=8)))  # the file changes; all 8 documents must be there
    ingest.ingest(str(root), [(str(src), None)], workers=1, progress=False)
    assert len(_docs(str(root), "code")) == 8
    assert not orphan.exists() and not tmp_left.exists()


def _empty_inputs(folder) -> list:
    """Inputs that hold no record: 0 bytes, blank lines, a zstd frame of nothing, a Parquet file of no rows."""
    folder.mkdir(exist_ok=True)
    files = {"e.jsonl": b"", "blank.jsonl": b"\n\n  \n", "frame.jsonl.zst": zstandard.ZstdCompressor().compress(b"")}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    pq.write_table(pa.table({"id": pa.array([], pa.string()), "text": pa.array([], pa.string())}),
                   folder / "rows.parquet")
    return [folder / n for n in files] + [folder / "rows.parquet"]


def test_an_input_with_no_record_is_an_error_naming_it(tmp_path):
    from cli.main import cli

    root = tmp_path / "c"
    for path in _empty_inputs(tmp_path / "raw"):
        with pytest.raises(InputError, match=f"{path}: holds no record"):
            ingest.ingest(str(root), [(str(path), "x")], workers=1, progress=False)
        assert not Corpus(str(root)).read_meta().get("inputs")  # nothing registered
        res = CliRunner().invoke(cli, ["ingest", "--corpus", str(root), "--quiet", str(path)])
        assert res.exit_code == 3 and f"{path}: holds no record" in res.output and "Traceback" not in res.output


def test_an_input_with_no_record_is_a_reported_skip_under_skip(tmp_path):
    from cli.main import cli

    good = tmp_path / "raw" / "code.jsonl"
    empty = _empty_inputs(tmp_path / "raw")
    good.write_text("".join(_sample_lines(n=4)))
    root = tmp_path / "c"
    res = CliRunner().invoke(cli, ["ingest", "--corpus", str(root), "--quiet", "--on-error", "skip",
                                   *map(str, empty), str(good)])
    assert res.exit_code == 0, res.output
    assert res.output.count("empty_file=1") == len(empty)
    for path in empty:
        assert f"skipped: {path}: holds no record" in res.output
    inputs = Corpus(str(root)).read_meta()["inputs"]
    assert [v["path"] for v in inputs.values()] == [str(good)]  # the empty ones are not registered
    assert len(_docs(str(root), "code")) == 4


def test_existing_foreign_folder_is_not_taken_over(tmp_path):
    project = tmp_path / "project"
    (project / "docs" / "guide").mkdir(parents=True)
    (project / "docs" / "guide" / "index.md").write_text("mine")
    src = tmp_path / "code.jsonl"
    src.write_text("".join(_sample_lines(n=3)))
    with pytest.raises(CorpusError, match="not an xgen corpus"):
        ingest.ingest(str(project), [(str(src), None)], workers=1, progress=False)
    assert (project / "docs" / "guide" / "index.md").read_text() == "mine"
    from cli.main import cli
    res = CliRunner().invoke(cli, ["ingest", "--quiet", "--corpus", str(project), str(src)])
    assert res.exit_code == 2, res.output  # refused as asked, as every command's non-empty foreign --out
    assert "is not an xgen corpus (no corpus.json); choose a new or empty folder for --corpus" in res.output
    assert (project / "docs" / "guide" / "index.md").read_text() == "mine"


def test_inputs_inside_the_corpus_and_empty_subset_are_refused(tmp_path):
    root = tmp_path / "c"
    ingest.ingest(str(root), [(shared_path("corpus", "sample", "code.jsonl"), None)], workers=1, progress=False)
    part = next((root / "docs" / "code").glob("*.parquet"))
    with pytest.raises(ValueError, match="inside the corpus"):
        ingest.ingest(str(root), [(str(part), "again")], workers=1, progress=False)
    with pytest.raises(ValueError, match="not a valid name"):
        ingest.ingest(str(root), [(shared_path("corpus", "sample", "code.jsonl"), "")], workers=1, progress=False)


def test_part_sha256_recorded_at_ingest(tmp_path):
    from xgen_data.store import fsutil

    root = str(tmp_path / "c")
    ingest.ingest(root, [(shared_path("corpus", "sample", "code.jsonl"), None)], workers=1, progress=False)
    corpus = Corpus(root)
    (entry,) = corpus.read_meta()["inputs"].values()
    assert sorted(entry["part_sha256"]) == sorted(entry["parts"])
    for part in corpus.parts("code"):
        assert entry["part_sha256"][part.name] == fsutil.sha256_file(part.path)


def test_ingesting_the_corpus_folder_itself_is_refused_plainly(sample_corpus):
    """`xgen ingest --corpus C C` says the input is the corpus, before walking into its attribute files."""
    with pytest.raises(ValueError, match="is the corpus being written .* or inside it"):
        ingest.find_inputs([sample_corpus], corpus_dir=sample_corpus)
    with pytest.raises(ValueError, match="is the corpus being written"):
        ingest.find_inputs([os.path.join(sample_corpus, "docs")], corpus_dir=sample_corpus)


def test_meta_is_always_stored_as_json():
    """A `meta` string that is not JSON was stored raw (DuckDB's json functions then failed on it)."""
    rec = lambda meta: readers.RawRecord("f.jsonl", 1, json.dumps({"text": "t", "meta": meta}).encode())  # noqa: E731
    assert readers.decode_record(rec("a string"))["meta"] == '"a string"'
    assert readers.decode_record(rec('{"k": 1}'))["meta"] == '{"k": 1}'  # JSON text (as Parquet sources hold it)
    assert json.loads(readers.decode_record(rec({"k": [1, 2]}))["meta"]) == {"k": [1, 2]}
