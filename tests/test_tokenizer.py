"""XGen tokenizer (SPEC §1) against the shared test vectors."""
import json

import pytest
from click.testing import CliRunner
from conftest import shared_path

from xgen_data import tokenizer as tok

VECTORS = json.load(open(shared_path("tokenizer", "xgen_vectors.json"), encoding="utf-8"))


@pytest.mark.parametrize("vec", VECTORS, ids=lambda v: repr(v["text"][:30]))
def test_vectors_both_modes(vec):
    assert tok.encode(vec["text"]) == vec["ids_data"]
    assert tok.encode(vec["text"], hf_compat=True) == vec["ids_hf"]
    assert tok.decode(vec["ids_data"]) == vec["text"]


def test_vocabulary_layout():
    enc = tok.get_encoding()
    assert enc.n_vocab == tok.VOCAB_SIZE == 50313
    assert enc.eot_token == tok.EOS_ID == 50256
    assert tok.encode(" " * 32 + "x")[0] == 50257  # 31 spaces (the 32nd joins " x"): lowest added id
    assert enc.encode_single_token(b" " * 2) == 50286
    assert enc.encode_single_token(b"\t" * 9) == 50287 and enc.encode_single_token(b"\t" * 2) == 50294
    assert enc.encode_single_token("<fim_prefix>") == 50295
    assert enc.encode_single_token("<reponame>") == 50312
    assert max(enc._mergeable_ranks.values()) < 2**16


@pytest.mark.parametrize("special", ["<|endoftext|>", *tok.CODE_SPECIAL_TOKENS])
def test_special_strings_in_documents_stay_text_in_data_mode(special):
    text = f"before {special} after {special}{special}"
    ids = tok.encode(text)
    assert all(i < tok.EOS_ID for i in ids), ids
    assert tok.decode(ids) == text
    hf = tok.encode(text, hf_compat=True)
    assert any(i >= tok.EOS_ID for i in hf)


def test_shared_corpus_sample_roundtrips():
    with open(shared_path("corpus", "sample", "code.jsonl"), encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f][:20]
    for text in texts:
        ids = tok.encode(text)
        assert tok.EOS_ID not in ids
        assert tok.decode(ids) == text


def test_decode_rejects_padding_ids():
    with pytest.raises(tok.TokenizerError, match="outside"):
        tok.decode([15496, 50313])


def test_bad_ranks_file_is_named(tmp_path, monkeypatch):
    bad = tmp_path / "bad.tiktoken"
    bad.write_text("not base64 at all\n")
    monkeypatch.setenv(tok.ENV_RANKS, str(bad))
    tok.get_encoding.cache_clear()
    try:
        with pytest.raises(tok.TokenizerError, match="bad.tiktoken"):
            tok.get_encoding()
        monkeypatch.setenv(tok.ENV_RANKS, str(tmp_path / "missing.tiktoken"))
        with pytest.raises(tok.TokenizerError, match="no such file"):
            tok.get_encoding()
    finally:
        tok.get_encoding.cache_clear()


def test_cli_encode_decode():
    from cli.main import cli

    runner = CliRunner()
    out = runner.invoke(cli, ["tokenizer", "encode", "foo<|endoftext|>bar"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output) == VECTORS[7]["ids_data"]
    out = runner.invoke(cli, ["tokenizer", "encode", "--hf-compat", "foo<|endoftext|>bar"])
    assert json.loads(out.output) == VECTORS[7]["ids_hf"]
    out = runner.invoke(cli, ["tokenizer", "decode", json.dumps(VECTORS[3]["ids_data"])])
    assert out.exit_code == 0 and out.output == VECTORS[3]["text"]
    out = runner.invoke(cli, ["tokenizer", "decode", "[1, 2"])
    assert out.exit_code != 0 and "JSON" in out.output


def test_array_encoding_is_data_mode():
    texts = [v["text"] for v in VECTORS]
    flat, lengths = tok.encode_to_arrays(texts)
    assert flat.dtype == "uint16" and lengths.tolist() == [len(v["ids_data"]) for v in VECTORS]
    assert flat.tolist() == [i for v in VECTORS for i in v["ids_data"]]
