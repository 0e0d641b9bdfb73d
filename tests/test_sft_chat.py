"""Chat in XGen's format (SPEC §5): prompt ids equal training ids, stop at EOS or `### Human:`, multi-turn
history, and the HF export's chat_template giving exactly xgen's ids in transformers."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from hf_helpers import MICRO, make_run, perturbed_params, require

from cli.main import cli
from xgen_data import tokenizer as xtok
from xgen_data.sft import masking, render, shapes
from xgen_train.evaluate import chat
from xgen_train.evaluate.generate import Generation
from xgen_train.export import hf_tokenizer

HISTORY = [("Name a colour.", "Blue."), ("Another one?", "Green, like grass.")]


def _training_ids(turns, system=None):
    conv = shapes.Conversation(tuple(turns), system)
    return masking.encode_pieces(render.pieces(conv, system_header=system is not None))[0].tolist()


@pytest.mark.parametrize("system", [None, "You are terse."])
def test_chat_prompt_is_a_prefix_of_the_training_ids(system):
    full = _training_ids(HISTORY + [("And a third?", "Red.")], system)
    prompt = chat.prompt_ids(HISTORY, "  And a third? ", system)
    assert full[:len(prompt)] == prompt
    assert xtok.decode(prompt).endswith("<|endoftext|>\n### Human: And a third?\n### Assistant:")
    assert xtok.decode(full[len(prompt):]) == " Red.<|endoftext|>"


def test_reply_stops_at_the_next_human_turn(monkeypatch):
    script = xtok.encode(" Sure thing.\n### Human: and then I say more") + [xtok.EOS_ID]

    def fake_generate(params, cfg, ids, max_new_tokens, should_stop=None, **kw):
        new = []
        for t in script:
            new.append(t)
            if t == xtok.EOS_ID:
                return Generation(new, "eos")
            if should_stop(new):
                return Generation(new, "stop")
        return Generation(new, "max_new_tokens")

    monkeypatch.setattr(chat, "generate", fake_generate)
    res = chat.reply(None, MICRO, [], "Hello?")
    assert res.text == "Sure thing." and res.stop == "human_tag"
    assert len(res.tokens) < len(script) - 3  # stopped at the tag, not at the EOS further on
    script[:] = xtok.encode(" Done.") + [xtok.EOS_ID]
    res = chat.reply(None, MICRO, [], "Hello?")
    assert res.text == "Done." and res.stop == "eos"


@pytest.mark.slow  # > 6 s on 2 cores
def test_cli_chat_multi_turn_keeps_history(tmp_path):
    run = make_run(tmp_path / "run", MICRO, perturbed_params(MICRO, seed=2))
    args = ["chat", str(run), "--prompt", "Hi", "--prompt", "More?", "--max-new-tokens", "6", "--format", "json"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    turns = json.loads(res.stdout)
    assert [t["prompt"] for t in turns] == ["Hi", "More?"]
    assert all(t["stop"] in ("eos", "human_tag", "max_new_tokens") for t in turns)
    assert json.loads(CliRunner().invoke(cli, args).stdout) == turns  # greedy: the same replies


@pytest.fixture(scope="module")
def hf_tok(tmp_path_factory):
    transformers = require("transformers")
    folder = tmp_path_factory.mktemp("tok")
    for name, body in (("tokenizer.json", hf_tokenizer.tokenizer_json()),
                       ("tokenizer_config.json", hf_tokenizer.tokenizer_config(2048)),
                       ("special_tokens_map.json", hf_tokenizer.special_tokens_map())):
        (folder / name).write_text(json.dumps(body, ensure_ascii=False))
    return transformers.AutoTokenizer.from_pretrained(str(folder))


@pytest.mark.parametrize("system", [None, "Be brief."])
def test_apply_chat_template_equals_xgen_ids(hf_tok, system):
    tok = hf_tok
    turns = [("Hi there", "Hello!"), ("Sum 2+2 in Python:", "```python\nprint(2 + 2)\n```"),
             ("তোমার নাম কি?", " আমি বট।  ")]
    messages = ([{"role": "system", "content": system}] if system else [])
    for p, r in turns:
        messages += [{"role": "user", "content": p}, {"role": "assistant", "content": r}]

    def ids(x):
        return list(x["input_ids"] if hasattr(x, "keys") else x)

    want = _training_ids([(p.strip(), r.strip()) for p, r in turns], system)
    assert ids(tok.apply_chat_template(messages)) == want
    prompt = ids(tok.apply_chat_template(messages[:-1], add_generation_prompt=True))
    assert prompt == chat.prompt_ids([(p.strip(), r.strip()) for p, r in turns[:-1]], turns[-1][0], system)
