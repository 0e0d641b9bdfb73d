"""Code corpus layouts: BigCode StarCoderData / The Stack Parquet, and `--columns` for other schemas."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from tests.conftest import shared_path


def _code_records():
    return [json.loads(x) for x in open(shared_path("corpus", "sample", "code.jsonl"))]


def _write_starcoder(root, recs):
    """StarCoderData's layout: <language>/train-0000k-of-0000n.parquet with its column names."""
    by_lang = {}
    for r in recs:
        by_lang.setdefault(r["language"], []).append(r)
    for lang, rs in by_lang.items():
        meta = [json.loads(r["meta"]) if isinstance(r["meta"], str) else r["meta"] for r in rs]
        table = pa.table({
            "max_stars_repo_path": [r["path"] for r in rs],
            "max_stars_repo_name": [m.get("package", "repo") for m in meta],
            "max_stars_count": pa.array([len(r["text"]) % 97 for r in rs], pa.int64()),
            "max_stars_repo_licenses": pa.array([[r["license"]] if r["license"] else [] for r in rs],
                                                pa.list_(pa.string())),
            "id": [f"sc-{r['id']}" for r in rs],
            "content": [r["text"] for r in rs],
        })
        (root / lang).mkdir(parents=True)
        pq.write_table(table, root / lang / "train-00000-of-00001.parquet")
    return by_lang


def test_starcoder_layout_round_trip(tmp_path):
    from cli.main import cli
    from xgen_data.stats import sql

    recs = _code_records()
    by_lang = _write_starcoder(tmp_path / "starcoderdata", recs)
    corpus = str(tmp_path / "corpus")
    res = CliRunner().invoke(cli, ["ingest", "--corpus", corpus, "--workers", "1", "--quiet",
                                   str(tmp_path / "starcoderdata")])
    assert res.exit_code == 0, res.output
    con = sql.connect(corpus, quiet=True)
    rows = con.execute("""SELECT id, subset, text, path, language, source, license, meta FROM documents
                          ORDER BY id""").fetchall()
    assert len(rows) == len(recs) and {r[1] for r in rows} == {"starcoder"}
    want = {f"sc-{r['id']}": r for r in recs}
    for doc_id, _, text, path, lang, source, lic, meta in rows:
        r = want[doc_id]
        assert (text, path, lang, source) == (r["text"], r["path"], r["language"], "starcoderdata")
        assert json.loads(lic) == ([r["license"]] if r["license"] else [])
        m = json.loads(meta)
        assert m["max_stars_repo_name"] and m["max_stars_count"] == len(r["text"]) % 97  # repository context
    assert set(by_lang) == {r[4] for r in rows}


def test_columns_mapping_round_trip(tmp_path):
    from cli.main import cli
    from xgen_data.attributes import licenses
    from xgen_data.stats import sql

    recs = _code_records()[:10]
    pq.write_table(pa.table({"code": [r["text"] for r in recs], "filepath": [r["path"] for r in recs],
                             "lic": [r["license"] for r in recs], "uid": [r["id"] for r in recs],
                             "stars": [3] * len(recs)}), tmp_path / "other.parquet")
    corpus = str(tmp_path / "corpus")
    res = CliRunner().invoke(cli, ["ingest", "--corpus", corpus, "--workers", "1", "--quiet", "--subset", "code",
                                   "--columns", "text=code,path=filepath,license=lic,id=uid",
                                   str(tmp_path / "other.parquet")])
    assert res.exit_code == 0, res.output
    rows = sql.connect(corpus, quiet=True).execute("SELECT id, text, path, license, meta FROM documents").fetchall()
    got = {r[0]: r for r in rows}
    for r in recs:
        assert got[r["id"]][1:4] == (r["text"], r["path"], r["license"])
        assert json.loads(got[r["id"]][4]) == {"stars": 3}  # unmapped columns are kept in meta
    assert all(licenses.normalize(r[3])[1] is None for r in rows)


@pytest.mark.parametrize("spec,match", [("text", "not field=column"), ("body=content", "not a corpus field"),
                                        ("text=a,text=b", "mapped twice")])
def test_bad_columns_are_clear_errors(tmp_path, spec, match):
    from cli.main import cli

    f = tmp_path / "x.jsonl"
    f.write_text('{"text": "hi"}\n')
    res = CliRunner().invoke(cli, ["ingest", "--corpus", str(tmp_path / "c"), "--columns", spec, str(f)])
    assert res.exit_code != 0 and match in res.output and "Traceback" not in res.output


def test_missing_mapped_column_names_file_and_row(tmp_path):
    from xgen_data.sources import ingest, readers

    pq.write_table(pa.table({"code": ["x " * 200]}), tmp_path / "o.parquet")
    with pytest.raises(readers.RecordError, match=r"o.parquet:1: missing column 'content'"):
        ingest.ingest(str(tmp_path / "c"), [(str(tmp_path / "o.parquet"), "code")], workers=1, progress=False,
                      columns=(("text", "content"),))


def test_metadata_tokens_are_inserted_by_id(tmp_path):
    from xgen_data import tokenizer
    from xgen_data.sources import ingest, readers
    from xgen_data.stats import sql

    recs = _code_records()[:6]
    _write_starcoder(tmp_path / "sc", recs)
    plain, meta = str(tmp_path / "plain"), str(tmp_path / "meta")
    ingest.ingest(plain, [(str(p), None) for p in sorted((tmp_path / "sc").rglob("*.parquet"))], workers=1,
                  progress=False)
    ingest.ingest(meta, [(str(p), None) for p in sorted((tmp_path / "sc").rglob("*.parquet"))], workers=1,
                  progress=False, metadata_tokens=True)
    q = "SELECT id, text, n_tokens, meta, path FROM documents ORDER BY id"
    a = sql.connect(plain, quiet=True).execute(q).fetchall()
    b = sql.connect(meta, quiet=True).execute(q).fetchall()
    import pyarrow.parquet as pq

    toks = {}
    for part in (tmp_path / "meta" / "docs" / "starcoder").glob("*.parquet"):
        t = pq.read_table(part, columns=["id", "tokens"]).to_pydict()
        toks.update(zip(t["id"], t["tokens"]))
    special = {name: tokenizer.FIRST_SPECIAL_ID + tokenizer.CODE_SPECIAL_TOKENS.index(name)
               for name in ("<reponame>", "<filename>", "<gh_stars>")}
    for (i, text, n, m, path), (_, text2, n2, _, _) in zip(a, b):
        m = json.loads(m)
        pre = ingest.metadata_token_ids(m["max_stars_repo_name"], path, readers.stars_bucket(m["max_stars_count"]))
        assert text2 == text and n2 == n + len(pre)  # the text is unchanged, the prefix is counted
        assert toks[i][:len(pre)] == pre.tolist() and toks[i][0] == special["<reponame>"]
        assert tokenizer.decode(toks[i][:len(pre)]).startswith(f"<reponame>{m['max_stars_repo_name']}<filename>{path}")
    # a text that spells a special token never becomes one (data mode): only the inserted ids are special
    assert special["<reponame>"] not in ingest.metadata_token_ids(None, "<reponame>x", None).tolist()[1:]
    assert readers.stars_bucket(0) == "0" and readers.stars_bucket(12) == "10-100" and readers.stars_bucket(None) is None
