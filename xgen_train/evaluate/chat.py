"""Chat with an instruction-tuned model in XGen's format (SPEC §5), the same rendering it was trained on.

A conversation so far (finished turns, each ending with EOS by id) plus the new prompt is rendered by
:func:`xgen_data.sft.render.prompt_pieces` and tokenized by :func:`xgen_data.sft.masking.encode_pieces`, so
the prompt ids are exactly the ids of the same text in training. Generation (:mod:`xgen_train.evaluate.generate`,
KV cache) stops at EOS or when the reply reaches ``\\n### Human:`` (the model starting the next human turn);
the reply text is cut there and stripped (contents are stripped in training too).
"""
from __future__ import annotations

from dataclasses import dataclass

from xgen_data import tokenizer as xtok
from xgen_data.errors import InputError
from xgen_data.sft import masking, render
from xgen_train.evaluate.generate import generate
from xgen_train.model.config import ModelConfig

_TAIL_TOKENS = 8  # the stop text is 4 tokens; decoding this many recent ids finds it wherever BPE splits


@dataclass
class Reply:
    """One assistant turn: ``text`` (cut at the stop text, stripped), the new ``tokens`` and ``stop``
    (``"eos"``, ``"human_tag"``, ``"max_new_tokens"`` or ``"max_positions"``), and the prompt length."""

    text: str
    tokens: list[int]
    stop: str
    prompt_tokens: int


def prompt_ids(history: list[tuple[str, str]], prompt: str, system: str | None = None) -> list[int]:
    """Token ids of the chat prompt: ``history`` turns (prompt, reply) each ending in EOS, then the new
    ``### Human: {prompt}\\n### Assistant:`` for the model to continue."""
    done, tail = render.prompt_pieces(history, prompt, system)
    return masking.encode_pieces(done, open_tail=tail)[0].astype(int).tolist()


def _hit_stop(new: list[int]) -> bool:
    return render.STOP_TEXT in xtok.decode(new[-_TAIL_TOKENS:])


def reply(params, cfg: ModelConfig, history: list[tuple[str, str]], prompt: str, *, system: str | None = None,
          max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0) -> Reply:
    """Generate the assistant's reply to ``prompt`` after ``history`` (greedy by default).

    Raises:
        ValueError: an empty prompt, or the conversation is too long for the model's positions
            (:func:`xgen_train.evaluate.generate.generate`).
    """
    if not prompt.strip():
        raise InputError("empty prompt")
    ids = prompt_ids(history, prompt, system)
    res = generate(params, cfg, ids, max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
                   vocab_limit=xtok.VOCAB_SIZE, should_stop=_hit_stop)
    text = xtok.decode([t for t in res.tokens if t != xtok.EOS_ID]).split(render.STOP_TEXT)[0]
    return Reply(text.strip(), res.tokens, "human_tag" if res.stop == "stop" else res.stop, len(ids))
