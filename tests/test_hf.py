"""Hugging Face hand-over: export files and values, round trip, import checks, tokenizer.json
identity with the XGen tokenizer, and parity with transformers' LlamaForCausalLM (extra ``[hf]``)."""
from __future__ import annotations

import json
import os
import random

import jax
import numpy as np
import pytest
import safetensors.numpy
from click.testing import CliRunner
from hf_helpers import MICRO, make_run, perturbed_params, require, sample_texts

from cli.main import cli
from xgen_data import tokenizer as xtok
from xgen_train.export import hf
from xgen_train.loop.checkpoint import latest_checkpoint, load_checkpoint
from xgen_train.model.config import CONFIGS
from xgen_train.model.model import build_model, flat_params, hf_param_names

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TINY = CONFIGS["tiny"]


@pytest.fixture(scope="module")
def tiny_params():
    return perturbed_params(TINY, seed=1)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_params):
    """A run folder of the tiny config and its export made by the CLI: ``(run, out)``."""
    root = tmp_path_factory.mktemp("hf")
    run = make_run(root / "run", TINY, tiny_params, step=7)
    res = CliRunner().invoke(cli, ["export", "hf", str(run), "--out", str(root / "out")])
    assert res.exit_code == 0, res.output
    assert "exported step 7" in res.output
    return run, root / "out"


def _leaves_equal(a, b) -> bool:
    fa, fb = flat_params(a), flat_params(b)
    return fa.keys() == fb.keys() and all(np.array_equal(np.asarray(fa[k]), np.asarray(fb[k])) for k in fa)


# ------------------------------------------------------------------------------------- files and values

def test_export_config_values_are_spec(exported):
    _, out = exported
    conf = json.loads((out / "config.json").read_text())
    expected = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 51200,
        "hidden_size": TINY.hidden, "intermediate_size": TINY.intermediate, "num_hidden_layers": TINY.n_layers,
        "num_attention_heads": TINY.n_heads, "num_key_value_heads": TINY.n_heads, "head_dim": TINY.head_dim,
        "max_position_embeddings": TINY.max_positions, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}, "bos_token_id": 50256,
        "eos_token_id": 50256, "tie_word_embeddings": False, "hidden_act": "silu", "attention_bias": False,
        "mlp_bias": False, "torch_dtype": "float32",
    }
    for key, value in expected.items():
        assert conf[key] == value, key
    # the 7B config: every SPEC §3 number
    c7 = hf.hf_config(CONFIGS["xgen-7b"])
    assert (c7["hidden_size"], c7["intermediate_size"], c7["num_hidden_layers"], c7["num_attention_heads"],
            c7["num_key_value_heads"], c7["vocab_size"], c7["max_position_embeddings"]) == (
        4096, 11008, 32, 32, 32, 51200, 8192)
    gen = json.loads((out / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"], gen["pad_token_id"]) == (50256, 50256, 50256)
    tc = json.loads((out / "tokenizer_config.json").read_text())
    assert tc["eos_token"] == tc["bos_token"] == "<|endoftext|>" and tc["add_bos_token"] is False
    assert tc["model_max_length"] == TINY.max_positions
    stm = json.loads((out / "special_tokens_map.json").read_text())
    assert stm["additional_special_tokens"] == list(xtok.CODE_SPECIAL_TOKENS)


def test_export_tensors_are_hf_names_and_shapes(exported, tiny_params):
    run, out = exported
    tensors = safetensors.numpy.load_file(out / "model.safetensors")
    names = hf_param_names(TINY)
    flat = flat_params(tiny_params)
    assert set(tensors) == set(names.values())
    for hk_name, hf_name in names.items():
        assert tensors[hf_name].dtype == np.float32
        np.testing.assert_array_equal(tensors[hf_name], np.asarray(flat[hk_name]), err_msg=hf_name)
    assert tensors["model.layers.0.mlp.gate_proj.weight"].shape == (TINY.intermediate, TINY.hidden)  # [out, in]
    assert tensors["model.layers.1.mlp.down_proj.weight"].shape == (TINY.hidden, TINY.intermediate)
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "np") as fh:
        assert fh.metadata() == {"format": "pt"}
    marker = json.loads((out / hf.EXPORT_MARKER).read_text())
    from xgen_data.store.fsutil import sha256_file

    assert marker["step"] == 7 and marker["source_checkpoint"] == str(latest_checkpoint(run / "checkpoints"))
    assert {f: sha256_file(str(out / f)) for f in marker["sha256"]} == marker["sha256"]
    assert set(marker["sha256"]) == {p.name for p in out.iterdir()} - {hf.EXPORT_MARKER}


def test_round_trip_export_import_is_identical(exported, tiny_params, tmp_path):
    _, out = exported
    cfg, params = hf.load_hf(out)
    assert cfg == TINY
    assert _leaves_equal(params, tiny_params)
    res = CliRunner().invoke(cli, ["import", "hf", str(out), "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    assert "config 'tiny'" in res.output
    # the run folder holds an ordinary step-0 checkpoint that the trainer's resume can read
    from xgen_train.loop.optimizer import OptimizerConfig, make_optimizer

    template = jax.eval_shape(lambda: make_optimizer(OptimizerConfig()).init(params))
    ck = load_checkpoint(tmp_path / "run" / "checkpoints" / "step_00000000", opt_state_template=template,
                         verify=True)
    assert ck.step == 0 and ck.model_config == TINY and ck.meta["run"]["config_name"] == "tiny"
    assert ck.meta["extra"]["imported_from"] == str(out.resolve())
    assert _leaves_equal(ck.params, tiny_params)
    assert int(ck.opt_state[1][0].count) == 0  # fresh AdamW state
    # `xgen train --init` takes the HF folder itself or the imported run folder, with identical params
    from xgen_train.export.hf import load_init

    for source in (out, tmp_path / "run"):
        init_cfg, init_params = load_init(source)
        assert init_cfg == TINY and _leaves_equal(init_params, tiny_params)
    again = CliRunner().invoke(cli, ["import", "hf", str(out), "--out", str(tmp_path / "run")])
    assert again.exit_code == 2 and "already holds checkpoints" in again.output


def test_export_replaces_an_export_and_refuses_other_folders(exported, tmp_path, tiny_params):
    run, _ = exported
    out = tmp_path / "exp"
    hf.export_hf(None, out, params=tiny_params, model_config=TINY, tokenizer=False)
    first = (out / "model.safetensors").read_bytes()
    changed = jax.tree.map(lambda x: x * 0.5, tiny_params)
    hf.export_hf(None, out, params=changed, model_config=TINY, tokenizer=False)
    assert (out / "model.safetensors").read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]  # no temp folders left behind
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    res = CliRunner().invoke(cli, ["export", "hf", str(run), "--out", str(other)])
    assert res.exit_code == 2 and "not an xgen export" in res.output and "Traceback" not in res.output
    assert (other / "notes.txt").read_text() == "keep me"
    res = CliRunner().invoke(cli, ["export", "hf", str(tmp_path / "mine"), "--out", str(tmp_path / "x")])
    assert res.exit_code == 3 and "neither a checkpoint directory nor a run directory" in res.output


# --------------------------------------------------------------------------------------- import checks

def _copy_export(src, dst, conf_change=None, tensor_change=None):
    import shutil

    shutil.copytree(src, dst)
    if conf_change:
        conf = json.loads((dst / "config.json").read_text())
        conf_change(conf)
        (dst / "config.json").write_text(json.dumps(conf))
    if tensor_change:
        t = safetensors.numpy.load_file(dst / "model.safetensors")
        tensor_change(t)
        safetensors.numpy.save_file(t, dst / "model.safetensors")
    return dst


@pytest.mark.parametrize("change, message", [
    (lambda c: c.pop("hidden_size"), "'hidden_size' missing"),
    (lambda c: c.update(num_key_value_heads=2), "'num_key_value_heads' is 2"),
    (lambda c: c.update(tie_word_embeddings=True), "'tie_word_embeddings' is True"),
    (lambda c: c.update(architectures=["MistralForCausalLM"]), "LlamaForCausalLM only"),
    (lambda c: c.update(hidden_act="gelu"), "'hidden_act' is 'gelu'"),
    (lambda c: c.update(rope_scaling={"rope_type": "linear", "factor": 2.0}), "'rope_scaling'"),
    (lambda c: c.update(rope_theta=500000.0), "rope_theta"),
    (lambda c: c.update(vocab_size="51200"), "'vocab_size' must be a positive integer"),
])
def test_import_refuses_bad_config_naming_the_key(exported, tmp_path, change, message):
    bad = _copy_export(exported[1], tmp_path / "bad", conf_change=change)
    with pytest.raises(hf.HFFormatError, match=message) as err:
        hf.load_hf(bad)
    assert "config.json" in str(err.value)


@pytest.mark.parametrize("change, message", [
    (lambda t: t.pop("model.layers.1.mlp.up_proj.weight"), "'model.layers.1.mlp.up_proj.weight' missing"),
    (lambda t: t.update({"model.layers.0.self_attn.q_proj.weight": np.zeros((128, 64), np.float32)}),
     r"'model.layers.0.self_attn.q_proj.weight' has shape \[128, 64\], expected \[128, 128\]"),
    (lambda t: t.update({"model.layers.2.mlp.up_proj.weight": np.zeros((3,), np.float32)}),
     "unexpected tensor 'model.layers.2.mlp.up_proj.weight'"),
    (lambda t: t["model.norm.weight"].__setitem__(0, np.nan), "'model.norm.weight' holds NaN"),
])
def test_import_refuses_bad_tensors_naming_them(exported, tmp_path, change, message):
    bad = _copy_export(exported[1], tmp_path / "bad", tensor_change=change)
    with pytest.raises(hf.HFFormatError, match=message):
        hf.load_hf(bad)


def test_import_cli_errors_are_one_line(exported, tmp_path):
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(cli, ["import", "hf", str(tmp_path / "empty"), "--out", str(tmp_path / "r")])
    assert res.exit_code == 3 and "config.json: missing" in res.output and "Traceback" not in res.output
    bad = _copy_export(exported[1], tmp_path / "trunc")
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    res = CliRunner().invoke(cli, ["import", "hf", str(bad), "--out", str(tmp_path / "r")])
    assert res.exit_code == 3 and "cannot read safetensors" in res.output
    assert not (tmp_path / "r").exists()


def test_import_reads_bfloat16_and_sharded_folders(exported, tmp_path, tiny_params):
    """Published LLaMA checkpoints are often bfloat16 and sharded; both import (values widened exactly)."""
    import ml_dtypes

    src = exported[1]
    dst = _copy_export(src, tmp_path / "bf16")
    t = safetensors.numpy.load_file(dst / "model.safetensors")
    (dst / "model.safetensors").unlink()
    keys = sorted(t)
    halves = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    for fname, ks in halves.items():
        safetensors.numpy.save_file({k: t[k].astype(ml_dtypes.bfloat16) for k in ks}, dst / fname)
    (dst / hf.WEIGHTS_INDEX).write_text(json.dumps({"weight_map": {k: f for f, ks in halves.items() for k in ks}}))
    cfg, params = hf.load_hf(dst)
    want = jax.tree.map(lambda x: np.asarray(x).astype(ml_dtypes.bfloat16).astype(np.float32), tiny_params)
    assert cfg == TINY and _leaves_equal(params, want)


# ------------------------------------------------------------------------------------------- tokenizer

def test_tokenizer_json_gives_xgen_ids(exported):
    """tokenizer.json (tokenizers library) == XGen's HF-compatible mode on the vectors, all sample documents
    and random whitespace-heavy strings; decoding inverts it."""
    tokenizers = require("tokenizers")
    tk = tokenizers.Tokenizer.from_file(str(exported[1] / "tokenizer.json"))
    assert tk.get_vocab_size() == xtok.VOCAB_SIZE
    from conftest import shared_path

    vectors = json.load(open(shared_path("tokenizer", "xgen_vectors.json"), encoding="utf-8"))
    for v in vectors:
        assert tk.encode(v["text"], add_special_tokens=False).ids == v["ids_hf"], v["text"][:60]
    texts = sample_texts("code.jsonl") + sample_texts("nl.jsonl", limit=80)
    rng = random.Random(0)
    atoms = [" ", "\t", "\n", "\r\n", "a", "'s", "12", "é", "日本", "🙂", "<|endoftext|>", "<fim_middle>",
             "\u00a0", "\u3000", "-->", "x"]
    texts += ["".join(rng.choice(atoms) * rng.choice([1, 2, 3, 9, 31, 40]) for _ in range(rng.randint(1, 25)))
              for _ in range(400)]
    n_tokens = 0
    for text in texts:
        want = xtok.encode(text, hf_compat=True)
        assert tk.encode(text, add_special_tokens=False).ids == want, text[:80]
        n_tokens += len(want)
    assert n_tokens > 100_000
    ids = xtok.encode(texts[0])
    assert tk.decode(ids, skip_special_tokens=False) == xtok.decode(ids)


def test_auto_tokenizer_modes(exported):
    """transformers' AutoTokenizer: default = HF-compatible mode (ids_hf), split_special_tokens = data mode."""
    require("transformers")
    from conftest import shared_path
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(exported[1]))
    assert tok.eos_token_id == tok.bos_token_id == tok.pad_token_id == 50256
    for v in json.load(open(shared_path("tokenizer", "xgen_vectors.json"), encoding="utf-8")):
        assert tok(v["text"])["input_ids"] == v["ids_hf"], v["text"][:60]
        assert tok(v["text"], split_special_tokens=True)["input_ids"] == v["ids_data"], v["text"][:60]


# ------------------------------------------------------------------------------------------------ parity

def _real_tokens(n_docs: int, length: int) -> np.ndarray:
    rows = [ids[:length] for ids in map(xtok.encode, sample_texts("nl.jsonl", limit=40)) if len(ids) >= length]
    assert len(rows) >= n_docs
    return np.asarray(rows[:n_docs], np.int32)


@pytest.mark.slow  # > 7 s on 2 cores
def test_parity_with_transformers_llama(exported, tiny_params):
    """from_pretrained(export): float32 logits on real text within 1e-4 of ours, identical greedy
    continuations (HF generate vs xgen_train.evaluate.generate), config values exactly ours."""
    torch = require("torch")
    require("transformers")
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    from xgen_train.evaluate.generate import generate

    _, out = exported
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    assert isinstance(model, LlamaForCausalLM)
    model.eval()
    c = model.config
    assert (c.vocab_size, c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_attention_heads,
            c.num_key_value_heads, c.max_position_embeddings) == (51200, TINY.hidden, TINY.intermediate,
                                                                   TINY.n_layers, TINY.n_heads, TINY.n_heads,
                                                                   TINY.max_positions)
    assert c.rms_norm_eps == 1e-6 and c.rope_parameters["rope_theta"] == 10000.0
    assert (c.bos_token_id, c.eos_token_id, c.tie_word_embeddings, c.hidden_act) == (50256, 50256, False, "silu")
    assert c.attention_bias is False and c.mlp_bias is False

    tokens = _real_tokens(2, 192)
    with torch.no_grad():
        theirs = model(torch.from_numpy(tokens.astype(np.int64))).logits.numpy()
    ours = np.asarray(build_model(TINY).apply(tiny_params, tokens))
    assert theirs.dtype == np.float32 and ours.shape == theirs.shape
    delta = float(np.abs(theirs - ours).max())
    assert delta <= 1e-4, delta
    assert float(np.abs(ours).max()) > 1.0  # the comparison is not between near-zero logits

    for row in tokens:
        prompt = row[:24].tolist()
        with torch.no_grad():
            hf_out = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=20, min_new_tokens=20,
                                    eos_token_id=None, pad_token_id=50256)
        hf_new = hf_out[0, len(prompt):].tolist()
        ours_new = generate(tiny_params, TINY, prompt, 20, eos_id=None).tokens
        assert ours_new == hf_new
        assert len(set(ours_new)) > 1  # not a degenerate constant continuation


def test_parity_of_an_imported_hf_model(tmp_path):
    """A LlamaForCausalLM made by transformers itself (random init, saved with save_pretrained) imports and
    gives the same logits in xgen."""
    torch = require("torch")
    require("transformers")
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    conf = LlamaConfig(vocab_size=MICRO.vocab_size, hidden_size=MICRO.hidden, intermediate_size=MICRO.intermediate,
                       num_hidden_layers=MICRO.n_layers, num_attention_heads=MICRO.n_heads,
                       num_key_value_heads=MICRO.n_heads, max_position_embeddings=MICRO.max_positions,
                       rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=50256, eos_token_id=50256)
    model = LlamaForCausalLM(conf).eval()
    with torch.no_grad():
        for _name, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(str(tmp_path / "m"))
    cfg, params = hf.load_hf(tmp_path / "m")
    assert cfg == MICRO
    tokens = _real_tokens(2, 64)
    with torch.no_grad():
        theirs = model(torch.from_numpy(tokens.astype(np.int64))).logits.numpy()
    ours = np.asarray(build_model(cfg).apply(params, tokens))
    assert float(np.abs(theirs - ours).max()) <= 1e-4


def test_generate_reads_a_hugging_face_folder_as_train_init_does(exported):
    run, out = exported
    args = ["--prompt", "The", "--max-new-tokens", "3", "--format", "json"]
    from_hf = CliRunner().invoke(cli, ["generate", str(out), *args])
    from_run = CliRunner().invoke(cli, ["generate", str(run), *args])
    assert from_hf.exit_code == 0 and from_run.exit_code == 0, from_hf.output + from_run.output
    new_ids = lambda res: json.loads(res.stdout)["new_ids"]  # noqa: E731
    assert new_ids(from_hf) == new_ids(from_run) and len(new_ids(from_hf)) == 3
