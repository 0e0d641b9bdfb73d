"""Programming-language identification (StarCoder's languages + Apex) and the `language` attribute."""
import json

import pytest

from tests.conftest import shared_path
from xgen_data.attributes import languages
from xgen_data.mixing import defaults


@pytest.mark.parametrize("path,text,want", [
    ("src/a.py", None, ("python", "extension")),
    ("force-app/Account.cls", None, ("apex", "extension")),       # Apex's primary extension, not TeX's .cls
    ("triggers/OnInsert.trigger", None, ("apex", "extension")),
    ("bin/run", "#!/usr/bin/env python3\nprint(1)\n", ("python", "shebang")),   # no extension: the shebang
    ("bin/deploy", "#!/bin/bash -e\necho hi\n", ("shell", "shebang")),
    ("Makefile", None, ("makefile", "filename")),
    ("lib/x.H", None, ("c", "extension")),                        # the table's override, case-insensitive
    ("a.m", None, (None, "ambiguous")),                           # MATLAB or others: never guessed
    ("notes.zzz", None, (None, "unknown")),
    ("README", "plain text\n", (None, "unknown")),
    (None, None, (None, "unknown")),
])
def test_identify(path, text, want):
    assert languages.identify(path, text) == want


def test_table_covers_starcoder_and_apex():
    t = languages.table()
    assert len(t) == 89 and "apex" in t and {"python", "c-sharp", "cpp", "java", "verilog", "zig"} <= set(t)
    # StarCoderData's 88 language folders = StarCoder's 86 programming languages + the data formats JSON, YAML
    assert {k: len(languages.keys_of_kind(k)) for k in languages.KINDS} == languages.KINDS == \
        {"starcoder": 86, "data": 2, "extra": 1}
    assert languages.keys_of_kind("data") == ["json", "yaml"] and languages.keys_of_kind("extra") == ["apex"]
    assert languages.kind("python") == "starcoder" and languages.kind("en") is None and languages.kind(None) is None
    # the-stack-smol-xl's card lists StarCoder's 86 plus Bison (its 'c++' is StarCoderData's 'cpp')
    smol_xl = set("""ada agda alloy antlr applescript assembly augeas awk batchfile bison bluespec c c++ c-sharp clojure
        cmake coffeescript common-lisp css cuda dart dockerfile elixir elm emacs-lisp erlang f-sharp fortran glsl go
        groovy haskell html idris isabelle java java-server-pages javascript julia kotlin lean literate-agda
        literate-coffeescript literate-haskell lua makefile maple markdown mathematica matlab ocaml pascal perl php
        powershell prolog protocol-buffer python r racket restructuredtext rmarkdown ruby rust sas scala scheme shell
        smalltalk solidity sparql sql stan standard-ml stata systemverilog tcl tcsh tex thrift typescript verilog
        vhdl visual-basic xslt yacc zig""".split())
    assert len(smol_xl) == 87 and set(languages.keys_of_kind("starcoder")) == (smol_xl - {"bison", "c++"}) | {"cpp"}
    assert all(lang["extensions"] or lang["filenames"] for lang in t.values())
    assert languages.source_key("C++") == "cpp" and languages.source_key("Python") == "python"
    assert languages.source_key("Brainfuck") == "brainfuck" and languages.source_key("") is None


def test_language_attribute_keeps_source_and_counts(corpus_copy, tmp_path):
    from xgen_data.sources import ingest
    from xgen_data.stats import sql

    src = [json.loads(x) for x in open(shared_path("corpus", "sample", "code.jsonl"))][:4]
    recs = [
        {"id": "shebang", "text": "#!/usr/bin/env python3\n" + src[0]["text"], "path": "bin/tool"},
        {"id": "unknown1", "text": src[1]["text"], "path": "x/data.zzz"},
        {"id": "unknown2", "text": src[2]["text"], "path": "x/more.zzz"},
        {"id": "given", "text": src[3]["text"], "path": "web/app.js", "language": "Python"},   # source kept
        {"id": "apex", "text": "public class A {}\n", "path": "classes/A.cls"},
    ]
    f = tmp_path / "extra.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in recs))
    ingest.ingest(corpus_copy, [(str(f), "starcoder")], workers=1, progress=False)
    defaults.run_filters(corpus_copy)
    con = sql.connect(corpus_copy, quiet=True)
    rows = {r[0]: r[1:] for r in con.execute("""SELECT id, language, language_source, language_detected, language_how,
        language_disagrees FROM documents WHERE subset = 'starcoder'""").fetchall()}
    assert rows["shebang"] == ("python", None, "python", "shebang", False)
    assert rows["given"] == ("python", "Python", "javascript", "extension", True)
    assert rows["apex"][0] == "apex" and rows["unknown1"][0] is None and rows["unknown1"][3] == "unknown"
    counts = dict(con.execute("""SELECT language_how, count(*) FROM documents WHERE subset = 'starcoder'
        GROUP BY ALL""").fetchall())
    assert counts == {"shebang": 1, "unknown": 2, "extension": 2}
    assert con.execute("SELECT count(*) FROM documents WHERE language_disagrees").fetchone()[0] >= 1
    # the sample's own code: every file with a path and a source language keeps it
    assert con.execute("""SELECT count(*) FROM documents WHERE subset = 'code'
        AND language IS DISTINCT FROM lower(language_source)""").fetchone()[0] == 0
    # `xgen stats` code tables: tokens per language, decisions by source and policy
    from click.testing import CliRunner

    from cli.main import cli

    res = CliRunner().invoke(cli, ["stats", "--corpus", corpus_copy, "--format", "json"])
    assert res.exit_code == 0, res.output
    out = {t["title"]: t["rows"] for t in json.loads(res.stdout[res.stdout.index("{"):])["tables"]}
    langs = next(rows for title, rows in out.items() if title.startswith("Code: tokens per language"))
    star = {r["language"]: r for r in langs if r["subset"] == "starcoder"}
    assert star["(unknown)"]["unidentified"] == 2 and star["python"]["disagree"] == 1 and star["apex"]["documents"] == 1
    assert all(r["subset"] != "natural" for r in langs)  # natural languages are not code
    assert star["python"]["kind"] == "starcoder" and star["apex"]["kind"] == "extra" and star["(unknown)"]["kind"] == "-"
    kinds = next(rows for title, rows in out.items() if title.startswith("Code: languages present by kind"))
    assert {(r["kind"], r["languages"]) for r in kinds if r["subset"] == "starcoder"} >= {("extra", 1)}
    dec = out["License decisions by source and policy"]
    assert {(r["subset"], r["policy"]) for r in dec} == {("code", "permissive")}  # defaults: code held to permissive
