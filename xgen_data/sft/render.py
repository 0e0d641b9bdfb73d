"""XGen's instruction format (SPEC §5), exactly: conversations to text pieces separated by ``<EOS>``.

A conversation renders as::

    [{system}\\n\\n]### Human: {prompt 1}\\n### Assistant: {response 1}<EOS>\\n### Human: {prompt 2}\\n### Assistant: {response 2}<EOS>…

``<EOS>`` is id 50256, inserted by id (never by encoding a string); the system header is optional and off by
default; each ``{response}`` follows ``### Assistant:`` after exactly one space. Since EOS is inserted by id,
a rendered example is a list of :class:`Piece` texts, each followed by one EOS; a chat prompt is the same
pieces plus an unfinished last piece ending in ``### Assistant:`` (no space: the space belongs to the first
response token, as in training). Generation stops at ``<EOS>`` or at :data:`STOP_TEXT`.
"""
from __future__ import annotations

from dataclasses import dataclass

from xgen_data.sft.shapes import Conversation
from xgen_data.tokenizer import EOS_ID

HUMAN_TAG = "### Human:"
ASSISTANT_TAG = "### Assistant:"
STOP_TEXT = "\n### Human:"
EOS_TEXT = "<|endoftext|>"  # how a rendered text shows the EOS id (the Hugging Face tokenizer's eos_token)
FORMAT = ("[{system}\\n\\n]### Human: {prompt 1}\\n### Assistant: {response 1}<EOS>"
          "\\n### Human: {prompt 2}\\n### Assistant: {response 2}<EOS>…")


@dataclass(frozen=True)
class Piece:
    """Text up to one ``<EOS>``; ``response`` is its final response text (its last ``len(response)`` chars)."""

    text: str
    response: str


def rendering_info(system_header: bool) -> dict:
    """What the SFT manifest records about the rendering (SPEC §5)."""
    return {"format": FORMAT, "system_header": system_header, "eos_id": EOS_ID, "stop": ["<EOS>", STOP_TEXT],
            "contents_stripped": True, "spec": "SPEC §5"}


def _turn(prompt: str, first: bool) -> str:
    return f"{'' if first else chr(10)}{HUMAN_TAG} {prompt}\n{ASSISTANT_TAG}"


def pieces(conv: Conversation, system_header: bool = False) -> list[Piece]:
    """The pieces of a finished conversation: piece ``i`` holds turn ``i`` and is followed by one EOS."""
    head = f"{conv.system}\n\n" if system_header and conv.system else ""
    return [Piece(f"{head if i == 0 else ''}{_turn(p, i == 0)} {r}", r) for i, (p, r) in enumerate(conv.turns)]


def prompt_pieces(history: list[tuple[str, str]], prompt: str, system: str | None = None
                  ) -> tuple[list[Piece], str]:
    """A chat prompt: the finished turns of ``history`` (each followed by EOS) and the open last text, which
    ends with ``### Assistant:`` for the model to continue."""
    head = f"{system}\n\n" if system else ""
    done = pieces(Conversation(tuple(history), system), system_header=bool(system)) if history else []
    return done, f"{'' if history else head}{_turn(prompt.strip(), not history)}"


def render_text(conv: Conversation, system_header: bool = False) -> str:
    """The whole example as one string, EOS shown as ``<|endoftext|>`` (what an HF tokenizer encodes with
    special tokens allowed, and what ``chat_template`` produces)."""
    return "".join(p.text + EOS_TEXT for p in pieces(conv, system_header))
