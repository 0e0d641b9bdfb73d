"""Instruction-tuning data: shapes, SPEC §5 rendering byte for byte, ids and loss mask, packing, SFT shards,
decontamination, bad input with file:line."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tests.conftest import shared_path
from xgen_data.errors import DamagedDataError, InputError, RefusedError
from xgen_data.sft import decontam, masking, pack, prepare, render, sft_format, shapes
from xgen_data.store import publish
from xgen_data.tokenizer import EOS_ID, decode, encode

TWO_TURNS = ("### Human: Hi there\n### Assistant: Hello!<|endoftext|>"
             "\n### Human: What is 2+2?\n### Assistant: 4.<|endoftext|>")
ONE_TURN = "### Human: Say hi\n### Assistant: hi<|endoftext|>"

SHAPE_CASES = [  # (record, shape, rendered text)
    ({"messages": [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"},
                   {"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": " 4. "}]},
     "openai", TWO_TURNS),
    ({"conversations": [{"from": "human", "value": "Hi there"}, {"from": "gpt", "value": "Hello!"},
                        {"from": "user", "value": "What is 2+2?"}, {"from": "assistant", "value": "4."}]},
     "sharegpt", TWO_TURNS),
    ({"prompt": {"role": "prompter", "text": "Hi there", "replies": [
        {"role": "assistant", "text": "Bad reply", "rank": 1, "replies": []},
        {"role": "assistant", "text": "Hello!", "rank": 0, "replies": [
            {"role": "prompter", "text": "What is 2+2?", "replies": [
                {"role": "assistant", "text": "4.", "rank": 0}]}]}]}},
     "oasst", TWO_TURNS),
    ({"instruction": "Say hi", "input": "", "output": "hi"}, "alpaca", ONE_TURN),
    ({"instruction": "Say hi", "input": "to Bob", "output": "hi"}, "alpaca",
     "### Human: Say hi\n\nto Bob\n### Assistant: hi<|endoftext|>"),
    ({"instruction": "Say hi", "context": "", "response": "hi", "category": "x"}, "dolly", ONE_TURN),
    ({"prompt": "Say hi", "response": "hi"}, "prompt_response", ONE_TURN),
    ({"text": "### Human: Hi there\n### Assistant: Hello!\n### Human: What is 2+2?\n### Assistant: 4."},
     "rendered", TWO_TURNS),
    ({"text": "ignored when meta.messages is present",
      "meta": {"messages": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": " hi"}]}},
     "rendered", ONE_TURN),
]


@pytest.mark.parametrize("record,shape,text", SHAPE_CASES, ids=[f"{c[1]}-{i}" for i, c in enumerate(SHAPE_CASES)])
def test_every_shape_renders_byte_for_byte(record, shape, text):
    got_shape, convs = shapes.conversations(record)
    assert got_shape == shape and len(convs) == 1
    assert render.render_text(convs[0]) == text


def test_system_header_optional_and_off_by_default():
    conv = shapes.conversations({"prompt": "Say hi", "response": "hi", "system": "Be brief."})[1][0]
    assert render.render_text(conv) == ONE_TURN
    assert render.render_text(conv, system_header=True) == "Be brief.\n\n" + ONE_TURN


def test_oasst_all_paths():
    record = SHAPE_CASES[2][0]
    _, convs = shapes.conversations(record, oasst_best_only=False)
    assert [render.render_text(c) for c in convs] == [
        "### Human: Hi there\n### Assistant: Bad reply<|endoftext|>", TWO_TURNS]


def _example(text_turns):
    return shapes.Conversation(tuple(text_turns))


@pytest.mark.parametrize("turns", [
    [("Hi there", "Hello!"), ("What is 2+2?", "4.")],
    [("Explain", "  indented?"), ("x", "'s quoted")],
    [("তোমার আগ্রহগুলো কি কি?", "আমি সব ধরনের জিনিসে আগ্রহী।")],
    [("code", "def f(x):\n    return x  # <|endoftext|> stays text\n")],
    [("a", "42"), ("b", "\u00e9t\u00e9"), ("c", "!!")],
])
def test_ids_equal_whole_text_and_mask_is_exactly_responses(turns):
    conv = _example([(p, r.strip()) for p, r in turns])
    ids, mask = masking.encode_pieces(render.pieces(conv))
    pieces = render.pieces(conv)
    want = []
    for p in pieces:
        want += encode(p.text) + [EOS_ID]
    assert ids.tolist() == want
    if "<|endoftext|>" not in str(turns):
        assert ids.tolist() == encode(render.render_text(conv), hf_compat=True)
    # the mask covers exactly each response (with the tag's space where BPE merges it) and its EOS
    bounds = np.flatnonzero(ids == EOS_ID)
    start = 0
    for (_, resp), end in zip(conv.turns, bounds):
        seg_ids, seg_mask = ids[start:end + 1], mask[start:end + 1]
        got = decode(seg_ids[seg_mask == 1].tolist())
        assert got in (resp + "<|endoftext|>", " " + resp + "<|endoftext|>")
        assert seg_mask[-1] == 1 and np.all(np.diff(seg_mask.astype(int)) >= 0)  # one contiguous tail
        assert render.ASSISTANT_TAG in decode(seg_ids[seg_mask == 0].tolist())
        start = end + 1


@pytest.mark.parametrize("record,problem", [
    ({"messages": [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}]}, "unknown role"),
    ({"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "y"}]}, "empty"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"},
                   {"role": "user", "content": "z"}]}, "ends on the human side"),
    ({"foo": 1, "bar": 2}, "cannot tell the record's shape"),
    ({"messages": [{"role": "user", "content": ["x"]}, {"role": "assistant", "content": "y"}]}, "must be a string"),
    ({"conversations": [{"from": "gpt", "value": "y"}]}, "expected a human turn"),
    ({"prompt": "x", "response": 3}, "must be a string"),
    ([1, 2], "JSON object"),
])
def test_malformed_records_name_file_and_line(tmp_path, record, problem):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"prompt": "ok", "response": "fine"}) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(InputError, match=rf"data\.jsonl:2: .*{problem}"):
        prepare.prepare([str(path)], str(tmp_path / "out"), prepare.Options(seq_len=64))
    assert not (tmp_path / "out").exists()
    m = prepare.prepare([str(path)], str(tmp_path / "out"), prepare.Options(seq_len=64, on_error="skip"))
    assert m["counts"]["skipped"] == 1 and m["counts"]["packed"] == 1
    assert "data.jsonl:2:" in m["sources"][0]["errors"][0]


def test_malformed_json_names_the_file_line_and_column(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"prompt": "ok", "response": "fine"}) + '\n{"prompt": 1\n')
    with pytest.raises(InputError) as err:
        prepare.prepare([str(path)], str(tmp_path / "out"), prepare.Options(seq_len=64))
    assert str(err.value) == (f"{path}:2: not valid JSON: Expecting ',' delimiter at the end of the line "
                              "(or use --on-error skip)")


def test_best_fit_decreasing_whole_examples_seeded():
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 300, size=500)
    rows = pack.best_fit_decreasing(lengths, 512, seed=3)
    assert sorted(i for r in rows for i in r) == list(range(500))  # every example once, none split
    assert all(sum(lengths[i] for i in r) <= 512 for r in rows)
    assert rows == pack.best_fit_decreasing(lengths, 512, seed=3)
    assert rows != pack.best_fit_decreasing(lengths, 512, seed=4)
    ff = pack.first_fit(lengths, 512, seed=3)
    assert len(rows) <= len(ff)
    assert len(rows) <= int(np.ceil(lengths.sum() / 512 * 11 / 9)) + 1


def test_overlong_drop_and_truncate():
    _ids = [np.arange(10), np.arange(3), np.arange(12)]
    masks = [np.r_[np.zeros(5), np.ones(5)].astype(np.uint8), np.ones(3, np.uint8),
             np.r_[np.zeros(9), np.ones(3)].astype(np.uint8)]
    lengths = np.array([10, 3, 12])
    p = pack.fit_lengths(lengths, masks, 8, "drop")
    assert p.dropped_overlong == [0, 2] and p.lengths.tolist() == [0, 3, 0]
    p = pack.fit_lengths(lengths, masks, 8, "truncate")
    assert p.truncated == [0] and p.dropped_no_target == [2] and p.lengths.tolist() == [8, 3, 0]


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_prepare_shards_rows_segments_and_checksums(tmp_path):
    src = _write(tmp_path / "mixed.jsonl", [c[0] for c in SHAPE_CASES] * 3)
    m = prepare.prepare([src], str(tmp_path / "sft"), prepare.Options(seq_len=64, seed=5))
    assert m["counts"]["packed"] == 3 * len(SHAPE_CASES) and m["shapes"]["alpaca"] == 6
    rows = sft_format.read_all(tmp_path / "sft")
    tok, mask, seg = rows["tokens"], rows["loss_mask"], rows["segment_ids"]
    n_examples = 0
    for r in range(len(tok)):
        for s in range(1, seg[r].max() + 1):
            where = np.flatnonzero(seg[r] == s)
            assert np.all(np.diff(where) == 1)  # contiguous
            assert tok[r, where[-1]] == EOS_ID and mask[r, where[-1]] == 1  # whole: ends on its EOS
            assert decode(tok[r, where].tolist()).startswith("### Human:")
            n_examples += 1
        assert np.all(tok[r][seg[r] == 0] == 0) and np.all(mask[r][seg[r] == 0] == 0)
    assert n_examples == m["counts"]["packed"]
    assert m["padding_share"] == pytest.approx((seg == 0).mean())
    assert m["n_rows"] == len(tok) and m["validation_rows"] == 0 and m["dtype"] == "uint16"
    # a validation split: the first rows of the same packing, the rest train
    mv = prepare.prepare([src], str(tmp_path / "sftv"), prepare.Options(seq_len=64, seed=5, validation_rows=2))
    assert (mv["validation_rows"], mv["n_rows"]) == (2, len(tok) - 2)
    val, train = sft_format.read_all(tmp_path / "sftv", "validation"), sft_format.read_all(tmp_path / "sftv", "train")
    assert np.array_equal(np.concatenate([val["tokens"], train["tokens"]]), tok)
    # the same inputs and seed give the same bytes
    m2 = prepare.prepare([src], str(tmp_path / "sft2"), prepare.Options(seq_len=64, seed=5))
    assert {k: m2[k] for k in ("shards", "counts")} == {k: m[k] for k in ("shards", "counts")}
    assert sft_format.verify(tmp_path / "sft") == []
    # a flipped byte and an edited manifest are caught
    entry = m["shards"][0]
    path = tmp_path / "sft" / entry["loss_mask"]["path"]
    data = bytearray(path.read_bytes())
    data[0] ^= 1
    path.write_bytes(bytes(data))
    assert any("loss_mask" in p for p in sft_format.verify(tmp_path / "sft"))
    man = json.loads((tmp_path / "sft" / "manifest.json").read_text())
    man["counts"]["packed"] += 1
    (tmp_path / "sft" / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(DamagedDataError, match="manifest"):
        sft_format.read_manifest(tmp_path / "sft")


def test_prepare_refuses_foreign_folder_and_rebuilds_own(tmp_path):
    src = _write(tmp_path / "a.jsonl", [{"prompt": "p", "response": "r"}])
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(RefusedError):
        prepare.prepare([src], str(tmp_path / "foreign"), prepare.Options(seq_len=32))
    prepare.prepare([src], str(tmp_path / "sft"), prepare.Options(seq_len=32))
    src2 = _write(tmp_path / "b.jsonl", [{"prompt": "p", "response": "r"}])
    m = prepare.prepare([src, src2], str(tmp_path / "sft"), prepare.Options(seq_len=32))
    assert m["counts"]["packed"] == 2 and sft_format.verify(tmp_path / "sft") == []
    assert sorted(os.listdir(tmp_path)) == ["a.jsonl", "b.jsonl", "foreign", "sft"]


def test_shifted_targets_stay_inside_examples():
    tokens = np.array([[5, 6, 7, 8, 9, 0]])
    mask = np.array([[0, 1, 1, 0, 1, 0]])
    seg = np.array([[1, 1, 1, 2, 2, 0]])
    labels, weights = sft_format.shifted_targets(tokens, mask, seg)
    assert labels.tolist() == [[6, 7, 8, 9, 0, 0]]
    assert weights.tolist() == [[1, 1, 0, 1, 0, 0]]  # 7 predicts 8 across examples: no
    assert sft_format.positions(seg).tolist() == [[0, 1, 2, 0, 1, 0]]


HUMANEVAL_ITEM = {
    "task_id": "HumanEval/0",
    "prompt": 'def has_close_elements(numbers, threshold):\n    """ Check if in given list of numbers, are any two '
              'numbers closer to each other than given threshold.\n    """\n',
    "canonical_solution": "    for idx, elem in enumerate(numbers):\n        for idx2, elem2 in enumerate(numbers):\n"
                          "            if idx != idx2:\n                return True\n    return False\n",
}
HUMANEVAL_SHORT = {  # a solution under 13 words: only the exact-substring rule can find it
    "task_id": "HumanEval/7",
    "prompt": 'def filter_by_substring(strings, substring):\n    """ Filter strings by substring. """\n',
    "canonical_solution": "    return [x for x in strings if substring in x]\n",
}
MMLU_ITEM = {"question": "Which planet in the solar system is known as the red planet because of iron oxide on"
                         " its surface?", "choices": ["Venus", "Mars", "Jupiter"], "answer": 1}


def test_decontamination_removes_planted_overlaps_keeps_clean(tmp_path):
    he = _write(tmp_path / "humaneval.jsonl", [HUMANEVAL_ITEM, HUMANEVAL_SHORT])
    mmlu = _write(tmp_path / "mmlu.jsonl", [MMLU_ITEM])
    solution = HUMANEVAL_ITEM["canonical_solution"].replace("    ", "\t")  # whitespace differs, code same
    records = [
        {"id": "clean", "prompt": "Tell me about Mars.", "response": "Mars is the fourth planet."},
        {"id": "mmlu-copy", "prompt": "QUIZ: which Planet, in the solar system, is known as the red planet "
                                      "because of iron-oxide on its surface?", "response": "Mars"},
        {"id": "code-copy", "prompt": "Write it", "response": solution},
        {"id": "code-short", "prompt": "Filter", "response": "def f(strings, substring):\n  return [x for x in "
                                                             "strings if substring   in x]"},
        {"id": "short-overlap", "prompt": "which planet in the solar system", "response": "Mars, I think."},
    ]
    src = _write(tmp_path / "train.jsonl", records)
    m = prepare.prepare([src], str(tmp_path / "sft"), prepare.Options(seq_len=256, decontaminate=[he, mmlu]))
    d = m["decontamination"]
    assert d["removed_per_benchmark"] == {"humaneval": 2, "mmlu": 1}
    got = {r["example_id"]: r for r in d["removed"]}
    assert set(got) == {"mmlu-copy", "code-copy", "code-short"}
    assert got["mmlu-copy"]["match_kind"] == "ngram13" and len(got["mmlu-copy"]["match"].split()) == 13
    assert got["code-copy"]["eval_item_id"] == "HumanEval/0"
    assert got["code-short"]["eval_item_id"] == "HumanEval/7" and got["code-short"]["match_kind"] == "code_substring"
    assert got["code-short"]["match"] == "return [x for x in strings if substring in x]"
    assert m["counts"]["packed"] == 2
    assert sft_format.read_removed(tmp_path / "sft").num_rows == 3


def test_normalize_spec_rules():
    assert decontam.normalize("Ｈｅｌｌｏ,  WORLD!\n\tIt's") == "hello world its"


@pytest.mark.slow
def test_prepare_shared_instruct_corpus(tmp_path):
    src = shared_path("corpus", "instruct.jsonl.zst")
    m = prepare.prepare([src], str(tmp_path / "sft"), prepare.Options(seq_len=8192, on_error="skip",
                                                                      trim_unanswered=True))
    assert m["counts"]["skipped"] == 0 and m["counts"]["packed"] > 10_000
    assert m["padding_share"] < 0.05
    assert sft_format.verify(tmp_path / "sft") == []


def test_long_context_examples(sample_corpus, tmp_path):
    from xgen_data.sft import long_context

    rep = long_context.make_examples(sample_corpus, str(tmp_path / "lc"), min_tokens=1500, per_source=2, seed=1)
    rows = [json.loads(x) for x in (tmp_path / "lc" / "long_context.jsonl").read_text().splitlines()]
    assert rep["examples"] == len(rows) > 5
    assert len({r["doc_id"] for r in rows}) == len(rows)  # never two from one document
    assert max(rep["per_source"].values()) <= 2 and set(rep["per_task"]) == set(long_context.TASKS)
    assert all(long_context.example_tokens(r["prompt"], r["response"]) >= 1500 for r in rows)
    q = next(r for r in rows if r["task"] == "question")
    quoted = q["prompt"].rsplit('after the line "', 1)[1].rsplit('" in the document?', 1)[0]
    lines = [ln.strip() for ln in q["prompt"].splitlines()]
    assert lines[lines.index(quoted) + 1] == q["response"]
    again = long_context.make_examples(sample_corpus, str(tmp_path / "lc2"), min_tokens=1500, per_source=2, seed=1)
    assert again["sha256"] == rep["sha256"]
    other = long_context.make_examples(sample_corpus, str(tmp_path / "lc3"), min_tokens=1500, per_source=2, seed=2)
    assert other["sha256"] != rep["sha256"]
    m = prepare.prepare([str(tmp_path / "lc" / "long_context.jsonl")], str(tmp_path / "sft"),
                        prepare.Options(seq_len=8192))
    assert m["shapes"] == {"prompt_response": len(rows)} and m["counts"]["packed"] == len(rows)


def test_long_context_is_published_never_over_user_files(sample_corpus, tmp_path):
    from click.testing import CliRunner

    from cli.main import cli
    from xgen_data.sft import long_context

    args = ["sft", "long-context", "--corpus", sample_corpus, "--min-tokens", "1500", "--per-source", "1"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.json").write_text('{"mine": 1}')
    res = CliRunner().invoke(cli, args + ["--out", str(mine)])
    assert res.exit_code == 2 and "not a long-context folder" in res.output and str(mine) in res.output
    assert (mine / "report.json").read_text() == '{"mine": 1}' and os.listdir(mine) == ["report.json"]
    res = CliRunner().invoke(cli, args + ["--out", os.path.join(sample_corpus, "lc")])
    assert res.exit_code == 2 and "is inside the input" in res.output
    assert not os.path.exists(os.path.join(sample_corpus, "lc"))
    for _ in range(2):  # an earlier output of its own is replaced whole
        res = CliRunner().invoke(cli, args + ["--out", str(tmp_path / "lc")])
        assert res.exit_code == 0, res.output
    assert sorted(os.listdir(tmp_path / "lc")) == [long_context.OUTPUT, long_context.REPORT]
    assert sorted(os.listdir(tmp_path)) == ["lc", "mine"]


def test_cli_sft_prepare_exit_codes(tmp_path):
    from click.testing import CliRunner

    from cli.main import cli

    bad = _write(tmp_path / "bad.jsonl", [{"prompt": "p", "response": "r"}, {"messages": [
        {"role": "user", "content": "only a question"}]}])
    res = CliRunner().invoke(cli, ["sft", "prepare", bad, "--out", str(tmp_path / "o"), "--seq-len", "64"])
    assert res.exit_code == 3 and "bad.jsonl:2:" in res.output and "human side" in res.output
    res = CliRunner().invoke(cli, ["sft", "prepare", bad, "--out", str(tmp_path / "o"), "--seq-len", "64",
                                   "--on-error", "skip", "--format", "json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["counts"]["skipped"] == 1
    for opt, value in (("--seq-len", "0"), ("--seq-len", "-5"), ("--validation-rows", "-1")):  # a usage error
        res = CliRunner().invoke(cli, ["sft", "prepare", bad, "--out", str(tmp_path / "u"), opt, value])
        assert res.exit_code == 2 and f"Invalid value for '{opt}'" in res.output, res.output
    res = CliRunner().invoke(cli, ["sft", "long-context", "--corpus", str(tmp_path), "--out", str(tmp_path / "l"),
                                   "--per-source", "0"])
    assert res.exit_code == 2 and "Invalid value for '--per-source'" in res.output, res.output
    assert not (tmp_path / "u").exists() and not (tmp_path / "l").exists()


def test_pretraining_decontamination_attribute_and_recipe_decision(sample_corpus, tmp_path):
    import dataclasses
    import shutil

    import pyarrow.parquet as pq

    from tests.conftest import demo_no_dedup
    from xgen_data.mixing import pipeline
    from xgen_data.mixing import recipe as recipe_mod
    from xgen_data.stats import sql
    from xgen_data.store.corpus import Corpus

    corpus = str(tmp_path / "corpus")
    shutil.copytree(sample_corpus, corpus)
    part = Corpus(corpus).parts("natural")[0]
    docs = pq.read_table(part.path, columns=["id", "text"]).to_pylist()
    victim = next(d for d in docs if len(d["text"].split()) > 200)
    words = victim["text"].split()
    evals = _write(tmp_path / "planted.jsonl", [{"id": "item-1", "question": " ".join(words[100:125]),
                                                  "answer": "x"}])
    base = demo_no_dedup()
    r = dataclasses.replace(base, decontaminate=(evals,))
    pipeline.apply_recipe_steps(corpus, r, progress=False)
    con = sql.connect(corpus, recipe=r, quiet=True)
    rows = con.execute("SELECT id, decontam_benchmark, decontam_item_id, decontam_kind, decontam_match "
                       "FROM documents WHERE drop_reason = 'eval_overlap'").fetchall()
    assert [row[:4] for row in rows] == [(victim["id"], "planted", "item-1", "ngram13")]
    assert len(rows[0][4].split()) == 13 and rows[0][4] in decontam.normalize(victim["text"])
    # the same corpus under a recipe without the key keeps the document; the attribute set is reused
    con = sql.connect(corpus, recipe=base, quiet=True)
    assert con.execute("SELECT kept IS NOT FALSE AND contaminated IS NULL FROM documents WHERE id = ?",
                       [victim["id"]]).fetchone() == (True,)
    from xgen_data.attributes import decontam as decontam_step

    c = Corpus(corpus)
    assert c.attribute_current(decontam_step.DECONTAM_STEP, decontam_step.decontam_params([evals]))
    with c.lock():
        assert decontam_step.compute_decontam_attributes(c, [evals]) is None  # once per eval-set hash
    # the recipe key round-trips through TOML, paths relative to the recipe file
    text = recipe_mod.to_toml(r)
    (tmp_path / "r.toml").write_text(text.replace(evals, "planted.jsonl"))
    assert recipe_mod.load(str(tmp_path / "r.toml")).decontaminate == (evals,)


def test_eval_set_shapes_and_bad_lines(tmp_path):
    hs = _write(tmp_path / "hellaswag.jsonl", [{"ctx": "A man is sitting on a roof. He", "endings": [
        "starts pulling up roofing on a roof while holding a hammer in his hand", "is ripping level tiles off"],
        "label": "0"}])
    index = decontam.load_eval_sets([hs])
    gram = next(iter(index.grams))
    assert index.grams[gram] == ("hellaswag", "1") and "roofing" in " ".join(index.grams)
    assert "ripping" not in " ".join(index.grams)  # only the correct ending is the reference
    short = _write(tmp_path / "short.jsonl", [{"id": "s1", "question": "Who wrote the novel Moby Dick?",
                                               "answer": "Herman Melville"}, {"id": "s2", "prompt": "Too short."}])
    index = decontam.load_eval_sets([short])
    assert index.sets[0]["too_short"] == 1 and not index.grams
    hit = decontam.find("Quiz time! WHO wrote the novel, Moby Dick? -- Herman Melville, of course.", index)
    assert hit is not None and (hit.eval_item_id, hit.match) == ("s1", "who wrote the novel moby dick herman melville")
    assert decontam.find("Who wrote the novel Moby Dick? Nobody knows.", index) is None
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "prompt": "ok"}\n{"id": 2}\n')
    with pytest.raises(InputError, match=r"bad\.jsonl:2: bad evaluation item: no prompt field"):
        decontam.load_eval_sets([str(bad)])


@pytest.mark.parametrize("point", ["sft.after_backup", "write_json.tmp_written"])
def test_prepare_killed_leaves_old_or_new(tmp_path, point):
    import subprocess
    import sys

    old = _write(tmp_path / "old.jsonl", [{"prompt": "p", "response": "old"}])
    new = _write(tmp_path / "new.jsonl", [{"prompt": "p", "response": "new"}] * 2)
    out = tmp_path / "sft"
    prepare.prepare([old], str(out), prepare.Options(seq_len=32))
    code = ("import sys; from xgen_data.sft import prepare; "
            "prepare.prepare([sys.argv[1]], sys.argv[2], prepare.Options(seq_len=32))")
    env = dict(os.environ, XGEN_CRASH_AT=point, PYTHONPATH=os.getcwd())
    res = subprocess.run([sys.executable, "-c", code, new, str(out)], env=env, capture_output=True)
    assert res.returncode == -9, res.stderr.decode()
    if point == "sft.after_backup":
        with pytest.raises(InputError, match="interrupted"):
            sft_format.read_manifest(out)
        assert sft_format.read_manifest(publish.backup_dir(str(out)))["counts"]["packed"] == 1
    else:
        assert sft_format.read_manifest(out)["counts"]["packed"] == 1  # the old set, untouched
    # the next prepare restores the old set first, then writes the new one
    m = prepare.prepare([new], str(out), prepare.Options(seq_len=32))
    assert m["counts"]["packed"] == 2 and sft_format.verify(out) == []
    assert sorted(os.listdir(tmp_path)) == ["new.jsonl", "old.jsonl", "sft"]


def test_cli_sft_verify(tmp_path):
    from click.testing import CliRunner

    from cli.main import cli

    src = _write(tmp_path / "a.jsonl", [{"prompt": "p", "response": "r"}])
    m = prepare.prepare([src], str(tmp_path / "sft"), prepare.Options(seq_len=32))
    assert CliRunner().invoke(cli, ["sft", "verify", str(tmp_path / "sft")]).exit_code == 0
    (tmp_path / "sft" / m["shards"][0]["tokens"]["path"]).write_bytes(b"\0" * 64)
    res = CliRunner().invoke(cli, ["sft", "verify", str(tmp_path / "sft")])
    assert res.exit_code == 1 and "tokens" in res.output
    (tmp_path / "sft" / m["shards"][0]["index"]["path"]).unlink()  # a second damaged file in the same shard
    res = CliRunner().invoke(cli, ["sft", "verify", str(tmp_path / "sft"), "--format", "json"])
    doc = json.loads(res.stdout)
    assert res.exit_code == 1 and len(doc["problems"]) == 2 and "2 damaged or missing" in doc["error"], res.output
    assert any(p.endswith("idx.parquet: file listed in manifest.json is missing") for p in doc["problems"])
    man = json.loads((tmp_path / "sft" / "manifest.json").read_text())
    man["counts"]["packed"] += 1
    (tmp_path / "sft" / "manifest.json").write_text(json.dumps(man))
    res = CliRunner().invoke(cli, ["sft", "verify", str(tmp_path / "sft")])  # damage found, like `xgen verify`
    assert res.exit_code == 1 and "manifest_sha256" in res.output, res.output
    assert "content does not match its manifest_sha256" in res.output
    del man["manifest_sha256"]
    (tmp_path / "sft" / "manifest.json").write_text(json.dumps(man))
    res = CliRunner().invoke(cli, ["sft", "verify", str(tmp_path / "sft")])
    assert res.exit_code == 1 and "manifest.json: no manifest_sha256 (the manifest's own checksum" in res.output
    res = CliRunner().invoke(cli, ["sft", "verify", str(tmp_path)])  # not SFT shards: unreadable input
    assert res.exit_code == 3 and f"Error: {tmp_path}: no manifest.json (not an SFT" in res.output, res.output


def test_trainer_loader_reads_prepared_shards(tmp_path):
    from xgen_train.loop.sft_data import SFTLoader

    src = _write(tmp_path / "mixed.jsonl", [c[0] for c in SHAPE_CASES] * 4)
    m = prepare.prepare([src], str(tmp_path / "sft"), prepare.Options(seq_len=64, validation_rows=2,
                                                                      rows_per_shard=3))
    assert len(m["shards"]) > 2
    for split in ("train", "validation"):
        loader = SFTLoader(tmp_path / "sft", 2, verify=True, split=split)
        mine = sft_format.read_all(tmp_path / "sft", split)
        assert loader.n_sequences == len(mine["tokens"])
        got = loader.rows(np.arange(loader.n_sequences))
        for k in sft_format.ARRAYS:
            assert np.array_equal(got[k], mine[k].astype(np.int32)), (split, k)


def test_prepare_hashes_the_bytes_it_reads_and_refuses_a_file_changed_meanwhile(tmp_path, monkeypatch):
    from xgen_data.sources import readers

    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"prompt": "Name a colour.", "response": "Blue."}) + "\n")
    ex = prepare.read_inputs([str(path)], prepare.Options(seq_len=64), None)
    import hashlib
    assert ex.sources[0]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()

    real_open = readers.open_input

    def open_then_append(p, *a, **k):  # another writer appends after the file was hashed
        opened = real_open(p, *a, **k)
        with open(p, "a") as g:
            g.write(json.dumps({"prompt": "Name a shape.", "response": "Circle."}) + "\n")
        return opened

    monkeypatch.setattr(readers, "open_input", open_then_append)
    with pytest.raises(InputError, match=r"a\.jsonl: the file changed while"):
        prepare.read_inputs([str(path)], prepare.Options(seq_len=64), None)


@pytest.mark.parametrize("line", [
    '{"prompt": "a", "response": "b", "x": ' + "[" * 5000 + "]" * 5000 + "}",  # a value nested too deeply
    '{"prompt": "\\ud800 hi", "response": "ok"}',  # a lone surrogate: no UTF-8 text
])
def test_unreadable_records_name_their_line_and_can_be_skipped(tmp_path, line):
    good = json.dumps({"prompt": "Name a colour.", "response": "Blue."})
    path = tmp_path / "bad.jsonl"
    path.write_text(good + "\n" + line + "\n")
    with pytest.raises(InputError, match=r"bad\.jsonl:2: "):
        prepare.prepare([str(path)], str(tmp_path / "out"), prepare.Options(seq_len=64))
    m = prepare.prepare([str(path)], str(tmp_path / "out"), prepare.Options(seq_len=64, on_error="skip"))
    assert m["counts"]["skipped"] == 1 and m["counts"]["packed"] == 1


def test_no_example_to_pack_is_an_error_not_an_empty_folder(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(InputError, match="no example to pack .*nothing was written"):
        prepare.prepare([str(path)], str(tmp_path / "out"), prepare.Options(seq_len=64))
    assert not (tmp_path / "out").exists()


def test_ambiguous_record_and_bad_rank_name_file_and_line(tmp_path):
    good = {"prompt": "p", "response": "r"}
    src = _write(tmp_path / "a.jsonl", [good, {"prompt": "p", "response": "r",
                                               "messages": [{"role": "user", "content": "q"}]}])
    with pytest.raises(InputError, match=r"a\.jsonl:2: ambiguous record: .*openai, prompt_response"):
        prepare.prepare([src], str(tmp_path / "out"), prepare.Options(seq_len=64))
    tree = {"prompt": {"role": "prompter", "text": "Hi", "replies": [
        {"role": "assistant", "text": "A", "rank": "1"}, {"role": "assistant", "text": "B", "rank": 0}]}}
    src = _write(tmp_path / "t.jsonl", [tree])
    with pytest.raises(InputError, match=r"t\.jsonl:1: oasst: 'rank' must be an integer or null, got '1'"):
        prepare.prepare([src], str(tmp_path / "out"), prepare.Options(seq_len=64))
    tree["prompt"]["replies"][0]["rank"] = None  # a null rank is allowed and sorts last
    assert shapes.conversations(tree)[1][0].turns == (("Hi", "B"),)
    assert not (tmp_path / "out").exists()


def test_input_given_twice_and_empty_eval_set_are_errors(tmp_path):
    src = _write(tmp_path / "a.jsonl", [{"prompt": "p", "response": "r"}])
    os.symlink(src, tmp_path / "b.jsonl")
    for twice in ([src, src], [src, str(tmp_path / "b.jsonl")]):
        with pytest.raises(InputError, match="given twice"):
            prepare.prepare(twice, str(tmp_path / "out"), prepare.Options(seq_len=64))
    (tmp_path / "humaneval.jsonl").write_text("")
    with pytest.raises(InputError, match=r"humaneval\.jsonl: the evaluation set holds no items"):
        prepare.prepare([src], str(tmp_path / "out"),
                        prepare.Options(seq_len=64, decontaminate=[str(tmp_path / "humaneval.jsonl")]))
    assert not (tmp_path / "out").exists()


def _cut_stream(path, fmt: str, n: int = 40) -> int:
    """``n`` prompt/response records compressed with ``fmt``, cut at two thirds of the bytes, written to ``path``;
    returns the complete lines before the cut."""
    import gzip
    import hashlib
    import zlib

    import zstandard

    words = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(2 * n)]  # little for zstd to fold
    data = "".join(json.dumps({"prompt": words[2 * i], "response": words[2 * i + 1]}) + "\n"
                   for i in range(n)).encode()
    if fmt == "jsonl.gz":
        packed = gzip.compress(data)
        cut = packed[: len(packed) * 2 // 3]
        good = zlib.decompressobj(wbits=31).decompress(cut).count(b"\n")
    else:  # frames of 1 KiB (one block each): a small input cut in the middle still has whole frames before
        frames = [zstandard.ZstdCompressor(level=3).compress(data[i:i + 1024]) for i in range(0, len(data), 1024)]
        packed = b"".join(frames)
        cut = packed[: len(packed) * 2 // 3]
        whole = sum(1 for k in range(len(frames)) if len(b"".join(frames[:k + 1])) <= len(cut))
        good = data[: 1024 * whole].count(b"\n")
    path.write_bytes(cut)
    assert 3 < good < n
    return good


@pytest.mark.parametrize("fmt", ["jsonl.zst", "jsonl.gz"])
def test_cut_compressed_input_stops_or_under_skip_keeps_what_came_before(tmp_path, fmt):
    """As ``xgen ingest`` does: a cut stream is an error naming file and line (exit 3), or under --on-error skip
    its records before the cut are kept, the break listed, and the other inputs read."""
    from click.testing import CliRunner

    from cli.main import cli

    cut = tmp_path / f"cut.{fmt}"
    good = _cut_stream(cut, fmt)
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({"prompt": f"p{i}", "response": f"r{i}"}) + "\n" for i in range(5)))
    out = tmp_path / "out"
    args = ["sft", "prepare", str(cut), str(other), "--seq-len", "256", "--out", str(out), "--format", "json"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 3, res.output
    assert f"{cut}:{good + 1}: corrupt or truncated {fmt} stream; the last good line is {good}" in res.output
    assert "nothing of this file was used" in res.output and not out.exists()
    res = CliRunner().invoke(cli, args + ["--on-error", "skip"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["counts"]["truncated_stream"] == 1
    m = sft_format.read_manifest(str(out))
    assert m["counts"]["records"] == good + 5 and m["counts"]["packed"] == good + 5
    src = m["sources"][0]
    assert src["records"] == good and src["broken_stream"].startswith(f"{cut}:{good + 1}: corrupt or truncated")
    assert "the rest of the file is skipped" in src["broken_stream"] and src["broken_stream"] in src["errors"]
    assert m["sources"][1]["records"] == 5


def test_corrupt_compressed_input_stops_even_under_skip(tmp_path):
    """Damaged bytes (not a cut): what was decoded before them may be wrong, so nothing is kept in either mode."""
    import gzip

    path = tmp_path / "bad.jsonl.gz"
    data = bytearray(gzip.compress("".join(json.dumps({"prompt": f"p{i}", "response": f"r{i}"}) + "\n"
                                           for i in range(200)).encode()))
    data[-6] ^= 0xFF  # the CRC-32 of the member: every byte decodes, the check fails
    path.write_bytes(bytes(data))
    for mode in ("raise", "skip"):
        with pytest.raises(InputError, match=r"bad\.jsonl\.gz:\d+: corrupt or truncated .*a corrupt stream stops"):
            prepare.prepare([str(path)], str(tmp_path / "out"), prepare.Options(seq_len=64, on_error=mode))
        assert not (tmp_path / "out").exists()
