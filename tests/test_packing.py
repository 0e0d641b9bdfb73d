"""Mixtures and packing (SPEC §2): sequence invariants, exact proportions, determinism, recoverable boundaries."""
import dataclasses
import filecmp
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import demo_no_dedup, shared_path

from xgen_data import tokenizer
from xgen_data.errors import RefusedError
from xgen_data.mixing import mixture, recipe, selection
from xgen_data.shards import packing
from xgen_data.shards import shard_format as shards
from xgen_data.stats import sql
from xgen_data.store.corpus import Corpus

EOS = tokenizer.EOS_ID


#: A minimal valid stage (subset x) for recipe-validation tests.
ONE_STAGE = "[[stages]]\nname='a'\nproportions={x=1.0}\n[[stages.substages]]\nname='s'\nseq_len=8\ntokens=64\n"


def _doc_tokens(corpus_dir):
    """{(subset, id): tokens} of every document of the corpus."""
    out = {}
    corpus = Corpus(corpus_dir)
    for part in corpus.parts():
        t = pq.read_table(part.path, columns=["id", "tokens"])
        for i, toks in zip(t["id"].to_pylist(), t["tokens"].to_pylist()):
            out[(part.subset, i)] = toks
    return out


def _substages(manifest):
    return [(st["name"], ss["name"], ss["seq_len"], ss["n_sequences"]) for st in manifest["stages"] for ss in st["substages"]]


def test_every_sequence_is_exactly_its_seq_len(demo_shards):
    manifest = shards.read_manifest(demo_shards)
    assert shards.verify(demo_shards) == []
    r = demo_no_dedup()
    expected = [(st.name, ss.name, ss.seq_len, ss.n_sequences) for st in r.stages for ss in st.substages]
    assert _substages(manifest) == expected
    for e in manifest["shards"]:
        data = shards.open_shard(demo_shards, e)
        assert data.shape == (e["n_sequences"], e["seq_len"]) and data.dtype == np.uint16
        assert int(data.max()) < tokenizer.VOCAB_SIZE
        assert sum(e["tokens_per_subset"].values()) + e["eos_tokens"] == data.size
        assert int((np.asarray(data) == EOS).sum()) == e["eos_tokens"]


def test_pre_shuffle_stream_reproduces_documents(demo_shards, sample_corpus):
    """Concatenate each stage's sequences in pre-shuffle order: it is doc EOS doc EOS ... exactly."""
    manifest = shards.read_manifest(demo_shards)
    docs = _doc_tokens(sample_corpus)
    con = sql.connect(sample_corpus, recipe=demo_no_dedup())
    dropped = {(s, i) for s, i in con.execute("SELECT subset, id FROM documents WHERE NOT kept").fetchall()}
    for st in manifest["stages"]:
        stream = np.concatenate([shards.pre_shuffle_sequences(demo_shards, st["name"], ss["name"]).ravel()
                                 for ss in st["substages"]])
        # pieces of documents, in stream order, from the index
        pieces = []
        for ss in st["substages"]:
            for e in [e for e in manifest["shards"] if e["stage"] == st["name"] and e["substage"] == ss["name"]]:
                pieces += pq.read_table(os.path.join(demo_shards, e["index_path"])).to_pylist()
        assert not stream[0] == EOS, "a stream never starts with EOS"
        eos_pos = np.flatnonzero(stream == EOS)
        assert not np.any(np.diff(eos_pos) == 1), "EOS is never doubled"
        # split on EOS: every segment is a (prefix of a) kept document's tokens
        bounds = np.concatenate([[-1], eos_pos])
        n_checked = 0
        for a, b in zip(bounds[:-1], bounds[1:]):
            seg = stream[a + 1:b]
            assert len(seg) > 0
            n_checked += 1
        ids = {(p["subset"], p["doc_id"]) for p in pieces}
        assert not ids & dropped, "a dropped document appears in the shards"
        assert n_checked == len(eos_pos)
        # every piece in the index matches the document's tokens at its offset
        for e in [e for e in manifest["shards"] if e["stage"] == st["name"]]:
            data = shards.open_shard(demo_shards, e)
            for p in pq.read_table(os.path.join(demo_shards, e["index_path"])).to_pylist():
                got = data[p["row"], p["start"]:p["start"] + p["length"]].tolist()
                want = docs[(p["subset"], p["doc_id"])][p["doc_offset"]:p["doc_offset"] + p["length"]]
                assert got == want
                end = p["start"] + p["length"]
                if end < e["seq_len"]:
                    assert data[p["row"], end] == EOS, "a piece that ends inside a sequence is followed by EOS"


def test_stream_is_documents_joined_by_eos(demo_shards, sample_corpus):
    """Rebuild the first sub-stage's pre-shuffle stream from the index and compare token by token."""
    manifest = shards.read_manifest(demo_shards)
    docs = _doc_tokens(sample_corpus)
    st, ss = manifest["stages"][0]["name"], manifest["stages"][0]["substages"][0]["name"]
    seqs = shards.pre_shuffle_sequences(demo_shards, st, ss)
    rows = []
    for e in [e for e in manifest["shards"] if e["stage"] == st and e["substage"] == ss]:
        rows += pq.read_table(os.path.join(demo_shards, e["index_path"])).to_pylist()
    rows.sort(key=lambda p: (p["pre_shuffle_seq"], p["start"]))
    seq_len = seqs.shape[1]
    rebuilt = []
    for prev, p in zip([None] + rows[:-1], rows):
        continues = (prev is not None and (prev["subset"], prev["doc_id"]) == (p["subset"], p["doc_id"])
                     and prev["start"] + prev["length"] == seq_len and p["start"] == 0
                     and prev["doc_offset"] + prev["length"] == p["doc_offset"])
        if prev is not None and not continues:
            rebuilt.append(EOS)  # exactly one EOS between two consecutive documents
        toks = docs[(p["subset"], p["doc_id"])]
        rebuilt += toks[p["doc_offset"]:p["doc_offset"] + p["length"]]
    flat = seqs.ravel().tolist()
    assert rebuilt == flat or rebuilt + [EOS] == flat


def test_proportions_within_one_percent(demo_shards):
    manifest = shards.read_manifest(demo_shards)
    r = demo_no_dedup()
    for st in r.stages:
        got = {}
        for e in manifest["shards"]:
            if e["stage"] == st.name:
                for k, v in e["tokens_per_subset"].items():
                    got[k] = got.get(k, 0) + v
        total = sum(got.values())
        for subset, p in st.proportions.items():
            assert abs(got[subset] / total - p) < 0.01 * p + 1e-9, (st.name, subset, got[subset] / total, p)


def test_same_seed_byte_identical_other_seed_differs(sample_corpus, demo_shards, tmp_path):
    r = demo_no_dedup()
    again = str(tmp_path / "again")
    packing.build(sample_corpus, r, again, progress=False)
    for e in shards.read_manifest(demo_shards)["shards"]:
        assert filecmp.cmp(os.path.join(demo_shards, e["path"]), os.path.join(again, e["path"]), shallow=False)
        assert filecmp.cmp(os.path.join(demo_shards, e["index_path"]), os.path.join(again, e["index_path"]), shallow=False)
    assert open(os.path.join(demo_shards, "manifest.json")).read() == open(os.path.join(again, "manifest.json")).read()
    other = str(tmp_path / "other")
    packing.build(sample_corpus, dataclasses.replace(r, seed=r.seed + 1), other, progress=False)
    e = shards.read_manifest(demo_shards)["shards"][0]
    assert not filecmp.cmp(os.path.join(demo_shards, e["path"]), os.path.join(other, e["path"]), shallow=False)


def test_rebuild_replaces_output_atomically(sample_corpus, tmp_path):
    out = tmp_path / "s"
    packing.build(sample_corpus, demo_no_dedup(), str(out), progress=False)
    first = (out / "manifest.json").read_text()
    packing.build(sample_corpus, demo_no_dedup(), str(out), progress=False)  # a rebuild replaces it whole
    assert (out / "manifest.json").read_text() == first
    (out / "notes").mkdir()
    (out / "notes" / "mine.txt").write_text("keep me")
    with pytest.raises(ValueError, match="does not list"):
        packing.build(sample_corpus, demo_no_dedup(), str(out), progress=False)
    assert (out / "notes" / "mine.txt").read_text() == "keep me"
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]


@pytest.mark.parametrize("target", [0, 1, 2, 11, 31, 57, 1000, 1001, 2999, 3000, 3001, 7777])
def test_select_documents_exact_tokens(target):
    costs = np.array([10, 20, 30, 40, 50, 60, 70, 80, 90, 550], dtype=np.int64)  # sum 1000
    idx, take = mixture.select_documents(costs, target, np.random.default_rng(0))
    got = int((take + 1).sum())
    assert got == target or (target == 1 and got == 0)
    assert np.all(take >= 1) and np.all(take <= costs[idx] - 1)
    full = target // 1000
    counts = np.bincount(idx, minlength=len(costs))
    assert counts.min() >= full and counts.max() <= full + 1


def test_effective_tokens_sum_exactly():
    r = recipe.load("xgen-7b")
    for st in r.stages:
        eff = mixture.effective_tokens(st)
        assert sum(eff.values()) == st.tokens
    assert mixture.effective_tokens(r.stages[0])["natural"] == 1_309_990_000_000


def test_xgen7b_recipe_restates_spec():
    r = recipe.load("xgen-7b")
    s1, s2 = r.stages
    assert [(s.seq_len, s.tokens) for s in s1.substages] == [(2048, 800e9), (4096, 400e9), (8192, 174.52e9)]
    assert mixture.effective_tokens(s1) == {"natural": 1_309_990_000_000, "code": 64_530_000_000}
    assert s1.tokens == 1_374_520_000_000 and f"{s1.proportions['natural']:.6f}" == "0.953053"  # SPEC: 95.3053%
    assert [(s.seq_len, s.tokens) for s in s2.substages] == [(8192, 110e9)]
    eff2 = mixture.effective_tokens(s2)
    assert eff2["starcoder"] == 55e9 and eff2["natural"] + eff2["code"] == 55e9 and s2.tokens == 110e9
    # the replayed 55B keep stage 1's ratio 1,309.99 : 64.53 (integer split, within one token)
    assert abs(eff2["natural"] * 64_530 - eff2["code"] * 1_309_990) <= 1_374_520
    assert abs(s2.proportions["starcoder"] - 0.5) < 1e-12 and abs(sum(s2.proportions.values()) - 1) < 1e-9
    assert r.license_policies() == {"code": "permissive", "starcoder": "strict"}
    assert s2.languages == {"starcoder": "original"}
    assert r.policy("strict").labels_must_agree and "MPL-2.0" not in r.policy("strict").allow
    assert "Artistic-2.0" in r.policy("permissive").allow and "Artistic-2.0" not in r.policy("strict").allow
    assert r.min_tokens == 100 and r.dedup["threshold"] == 0.7 and r.dedup["num_perm"] == 256
    assert recipe.load(_roundtrip(r)).stages == r.stages


def _roundtrip(r) -> str:
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(recipe.to_toml(r))
    return f.name


def test_xgen7b_plan_prints_table2_figures(capsys):
    """`xgen mix plan` of xgen-7b prints SPEC §2's budgets exactly (synthetic corpus stats: 1T tokens a subset)."""
    from cli.mix_cmd import print_plan_rows

    r = recipe.load("xgen-7b")
    rows = mixture.plan(r, {s: (1000, 10**12) for s in ("natural", "code", "starcoder")})
    print_plan_rows(r, rows)
    out = capsys.readouterr().out
    for figure in ("1,309.99B", "64.53B", "1,374.52B", "800.00B", "400.00B", "174.52B", "110.00B"):
        assert figure in out, figure
    assert "stage2: 110.00B = stage1 mixture 55.00B (natural 52.42B, code 2.58B) + starcoder 55.00B" in out
    assert "starcoder: license policy strict" in out
    natural = next(x for x in rows if x.stage == "stage1" and x.subset == "natural")
    assert natural.effective_tokens == 1_309_990_000_000 and abs(natural.epochs - 1.30999) < 1e-9


def _notes(tmp_path, body: str) -> tuple[list[str], object]:
    from xgen_data.mixing import mixture

    p = tmp_path / "r.toml"
    p.write_text(body)
    r = recipe.load(str(p))
    return mixture.packing_notes(r), r


def test_plan_states_every_rounding_of_what_the_recipe_asks(tmp_path):
    # one sub-stage, a whole number of sequences, stage tokens = budget: nothing to state
    notes, r = _notes(tmp_path, "[[stages]]\nname='a'\nproportions={x=1.0}\n"
                                "[[stages.substages]]\nname='s'\nseq_len=256\ntokens=399_872\n")
    assert notes == [] and r.stages[0].substages[0].n_sequences == 1562
    # a budget that is not a whole number of sequences: asked, packed, difference
    notes, r = _notes(tmp_path, "[[stages]]\nname='a'\nproportions={x=1.0}\n"
                                "[[stages.substages]]\nname='s'\nseq_len=256\ntokens=400_000\n")
    assert r.stages[0].substages[0].n_sequences == 1562
    assert notes == ["a/s: asks 400,000 tokens, packs 1,562 sequences of 256 = 399,872 tokens (128 fewer: budgets "
                     "are cut to whole sequences)"]
    # two sub-stages whose budgets leave part of the stage unpacked, one of them also cut
    notes, r = _notes(tmp_path, "[[stages]]\nname='a'\ntokens=1000\nproportions={x=0.5, y=0.5}\n"
                                "[[stages.substages]]\nname='s'\nseq_len=8\ntokens=64\n"
                                "[[stages.substages]]\nname='t'\nseq_len=16\ntokens=100\n")
    assert [ss.n_sequences for ss in r.stages[0].substages] == [8, 6]
    assert notes == ["a/t: asks 100 tokens, packs 6 sequences of 16 = 96 tokens (4 fewer: budgets are cut to whole "
                     "sequences)",
                     "a: asks 1,000 tokens, its sub-stage budgets sum to 164 (836 planned but not packed, so packed "
                     "shares drift from the proportions)"]
    # sub-stage budgets above the stage's tokens: an error naming the numbers
    with pytest.raises(recipe.RecipeError, match="sub-stage budgets sum to 128 tokens, more than the stage's 100"):
        _notes(tmp_path, "[[stages]]\nname='a'\ntokens=100\nproportions={x=1.0}\n"
                         "[[stages.substages]]\nname='s'\nseq_len=8\ntokens=64\n"
                         "[[stages.substages]]\nname='t'\nseq_len=8\ntokens=64\n")
    from xgen_data.mixing import mixture

    assert mixture.packing_notes(recipe.load("demo")) == []
    assert [n.split(":")[0] for n in mixture.packing_notes(recipe.load("xgen-7b"))] == ["stage1/8k", "stage2/8k"]


def test_recipe_effective_tokens_and_replay_errors(tmp_path):
    sub = "[[stages.substages]]\nname='s'\nseq_len=8\ntokens=64\n"
    one = "[[stages]]\nname='a'\neffective_tokens={x=40, y=24}\n" + sub
    p = tmp_path / "r.toml"
    p.write_text(one)
    st = recipe.load(str(p)).stages[0]
    assert st.tokens == 64 and mixture.effective_tokens(st) == {"x": 40, "y": 24} and st.proportions["x"] == 40 / 64
    for body, match in [
        ("[[stages]]\nname='a'\nproportions={x=1.0}\neffective_tokens={x=64}\n" + sub, "not both"),
        ("[[stages]]\nname='a'\ntokens=100\neffective_tokens={x=64}\n" + sub, "differs from the effective"),
        ("[[stages]]\nname='b'\nreplay={stage='a', tokens=32}\neffective_tokens={z=32}\n" + sub, "not an earlier"),
        (one + "[[stages]]\nname='b'\nreplay={stage='a', tokens=32}\neffective_tokens={z=32}\n"
         "licenses={z='lenient'}\n" + sub, "unknown license policy"),
        (one.replace("y=24}", "y=24}\nlicenses={x='strict'}") + "[[stages]]\nname='b'\nproportions={x=1.0}\n"
         "licenses={x='permissive'}\n" + sub, "one policy per recipe"),
    ]:
        p.write_text(body)
        with pytest.raises(recipe.RecipeError, match=match):
            recipe.load(str(p))
    p.write_text(one + "[[stages]]\nname='b'\nreplay={stage='a', tokens=33}\neffective_tokens={z=31}\n" + sub)
    b = recipe.load(str(p)).stages[1]
    assert mixture.effective_tokens(b) == {"x": 21, "y": 12, "z": 31} and b.tokens == 64  # 33 split 40:24


@pytest.mark.parametrize("body,match", [
    ("name='x'\n", "at least one"),
    ("[[stages]]\nname='a'\nproportions={x=0.5}\n[[stages.substages]]\nname='s'\nseq_len=8\ntokens=64\n", "sum to 0.5"),
    ("[[stages]]\nname='a'\nproportions={x=1.0}\n", "substages"),
    ("[[stages]]\nname='a'\ntokens=10\nproportions={x=1.0}\n[[stages.substages]]\nname='s'\nseq_len=8\ntokens=64\n", "more than"),
    ("[[stages]]\nname='a'\nproportions={x=1.0}\n[[stages.substages]]\nname='s'\nseq_len=8\ntokens=4\n", "less than one"),
    ("this is = = not toml", "not valid TOML"),
])
def test_recipe_errors_name_file_and_key(tmp_path, body, match):
    p = tmp_path / "bad.toml"
    p.write_text(body)
    with pytest.raises(recipe.RecipeError, match=match) as err:
        recipe.load(str(p))
    assert "bad.toml" in str(err.value)


def test_missing_subset_is_a_clear_error(sample_corpus, tmp_path):
    p = tmp_path / "r.toml"
    p.write_text("[[stages]]\nname='a'\nproportions={natural=0.5, starcoder=0.5}\n"
                 "[[stages.substages]]\nname='s'\nseq_len=8\ntokens=64\n")
    with pytest.raises(ValueError, match="starcoder"):
        packing.build(sample_corpus, recipe.load(str(p)), str(tmp_path / "s"), progress=False)


def test_out_dir_is_never_a_foreign_folder(sample_corpus, tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a shards directory"):
        packing.build(sample_corpus, demo_no_dedup(), str(precious), progress=False)
    assert (precious / "thesis.txt").read_text() == "mine"
    with pytest.raises(RefusedError, match="is the input .*choose an output folder outside it"):
        packing.build(sample_corpus, demo_no_dedup(), sample_corpus, progress=False)
    with pytest.raises(RefusedError, match="is inside the input"):
        packing.build(sample_corpus, demo_no_dedup(), os.path.join(sample_corpus, "shards"), progress=False)
    with pytest.raises(RefusedError, match="contains the input"):
        packing.build(sample_corpus, demo_no_dedup(), os.path.dirname(sample_corpus), progress=False)
    from click.testing import CliRunner

    from cli.main import cli

    res = CliRunner().invoke(cli, ["mix", "build", "--corpus", sample_corpus, "--recipe", "demo", "--out",
                                   os.path.join(sample_corpus, "shards")])  # refused before any step runs
    assert res.exit_code == 2 and "is inside the input" in res.output, res.output


def test_killed_build_leftovers_are_removed(sample_corpus, tmp_path):
    out = tmp_path / "s"
    stale = tmp_path / ".s.tmp-999999999"
    stale.mkdir()
    (stale / "x.bin").write_bytes(b"x" * 10)
    packing.build(sample_corpus, demo_no_dedup(), str(out), progress=False)
    assert not stale.exists() and (out / "manifest.json").exists()


def test_a_shipped_name_is_the_shipped_recipe_beside_a_folder_of_that_name(tmp_path, monkeypatch):
    (tmp_path / "demo").mkdir()  # e.g. the workdir of `xgen demo --workdir demo`
    monkeypatch.chdir(tmp_path)
    assert recipe.load("demo").name == "demo"
    with pytest.raises(recipe.RecipeError, match="is a directory, expected a recipe .toml file"):
        recipe.load("./demo")


@pytest.mark.parametrize("name", ["../escape", "/abs", "a/b", ".hidden", "x y"])
def test_unsafe_names_are_rejected(tmp_path, name):
    p = tmp_path / "r.toml"
    p.write_text(f"[[stages]]\nname={name!r}\nproportions={{natural=1.0}}\n"
                 "[[stages.substages]]\nname='s'\nseq_len=8\ntokens=64\n")
    with pytest.raises(recipe.RecipeError, match="not a valid name"):
        recipe.load(str(p))
    from xgen_data.sources import ingest

    with pytest.raises(ValueError, match="not a valid name"):
        ingest.ingest(str(tmp_path / "c"), [(shared_path("corpus", "sample", "code.jsonl"), name)], progress=False)


@pytest.mark.parametrize("body,match", [
    ("stages = 5\n", "stages must be an array of tables"),
    ("stages = ['a']\n", r"stages\[0\] must be a table"),
    ("dedup = 5\n" + ONE_STAGE,
     "dedup must be a table"),
    ("[dedup]\nbogus = 1\n" + ONE_STAGE,
     "dedup: unknown key 'bogus' \\(dedup parameters"),
    ("[dedup]\nthreshhold = 0.8\n" + ONE_STAGE,
     "unknown key 'threshhold', did you mean 'threshold'\\?"),
    ("[filters]\nmin_token = 5\n" + ONE_STAGE,
     "filters: unknown key 'min_token', did you mean 'min_tokens'\\?"),
    ("seeed = 3\n" + ONE_STAGE,
     "unknown key 'seeed', did you mean 'seed'\\?"),
    ("[[stages]]\nname='a'\nproportion={x=1.0}\n[[stages.substages]]\nname='s'\nseq_len=8\ntokens=64\n",
     "stage 'a': unknown key 'proportion', did you mean 'proportions'\\?"),
    ("[[stages]]\nname='a'\nproportions={x=1.0}\n[[stages.substages]]\nname='s'\nseq_len=8\ntoken=64\n",
     "unknown key 'token', did you mean 'tokens'\\?"),
    ("[dedup]\nenabled = 'no'\n" + ONE_STAGE,
     "true or false"),
    ("[filters]\nlicense_subsets = 'code'\n" + ONE_STAGE,
     "list of strings"),
    ("[[stages]]\nname='a'\nproportions={x=nan}\n[[stages.substages]]\nname='s'\nseq_len=8\ntokens=64\n", "finite"),
    ("[[stages]]\nname='a'\nproportions={x=1.0}\nsubstages=3\n", "substages must be"),
])
def test_recipe_types_are_checked(tmp_path, body, match):
    p = tmp_path / "bad.toml"
    p.write_text(body)
    with pytest.raises(recipe.RecipeError, match=match):
        recipe.load(str(p))


def test_empty_allow_list_allows_nothing(tmp_path):
    p = tmp_path / "r.toml"
    p.write_text("[filters]\nlicense_allow = []\n[[stages]]\nname='a'\nproportions={x=1.0}\n"
                 "[[stages.substages]]\nname='s'\nseq_len=8\ntokens=64\n")
    assert recipe.load(str(p)).allow_list() == ()


def test_build_that_cannot_fit_on_disk_is_refused(sample_corpus, tmp_path):
    p = tmp_path / "huge.toml"
    p.write_text("[dedup]\nenabled = false\n[[stages]]\nname='a'\nproportions={natural=1.0}\n"
                 "[[stages.substages]]\nname='s'\nseq_len=2048\ntokens=1_000_000_000_000_000\n")
    with pytest.raises(ValueError, match="GB free"):
        packing.build(sample_corpus, recipe.load(str(p)), str(tmp_path / "s"), progress=False)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("name", ["demo", "xgen-7b"])
def test_recipe_toml_round_trip(tmp_path, name):
    r = dataclasses.replace(recipe.load(name), license_allow_extra=("PSF-2.0",), seed=7)
    p = tmp_path / "r.toml"
    p.write_text(recipe.to_toml(r))
    assert dataclasses.replace(recipe.load(str(p)), path="") == dataclasses.replace(r, path="")


def test_kept_documents_are_compact_columns_equal_to_the_view(sample_corpus, demo_shards):
    """Kept documents are numeric codes and Arrow strings (no Python object per document, so a build over
    millions of documents holds a few dozen bytes each), and decode to exactly the documents view's rows."""
    import pyarrow as pa

    r = demo_no_dedup()
    docs = selection.kept_documents(sample_corpus, r.subsets(), r)
    con = sql.connect(sample_corpus, recipe=r, quiet=True)
    for name, d in docs.items():
        assert d.part_code.dtype == np.int32 and d.lang_code.dtype == np.int32 and d.row.dtype == np.int64
        assert isinstance(d.doc_id, pa.Array) and isinstance(d.source, pa.Array)
        got = [(d.part_names[p], r_, i, s, n, lang) for p, r_, i, s, n, lang in zip(
            d.part_code.tolist(), d.row.tolist(), d.doc_id.to_pylist(), d.source.to_pylist(), d.n_tokens.tolist(),
            d.language_of(np.arange(len(d.n_tokens))))]
        want = con.execute("""SELECT part, row, id, coalesce(source, ''), n_tokens, coalesce(language, ?)
            FROM documents WHERE kept AND subset = ? ORDER BY part, row""", [mixture.UNKNOWN_LANGUAGE, name]).fetchall()
        assert got == [tuple(w) for w in want] and got
        by_lang = d.tokens_by_language()
        assert sum(by_lang.values()) == int(d.costs.sum()) and list(by_lang) == sorted(by_lang)


def test_the_recipe_reference_example_parses():
    text = open(os.path.join(os.path.dirname(__file__), "..", "docs", "recipes.md"), encoding="utf-8").read()
    example = text.split("```toml\n", 1)[1].split("```", 1)[0]
    r = recipe.loads(example, "docs/recipes.md")
    assert [st.name for st in r.stages] == ["stage1", "stage2"] and r.stages[0].substages[0].n_sequences == 2048
