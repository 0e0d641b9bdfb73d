"""Instruction-data record shapes, recognised per record and turned into conversations.

Shapes (the name each is counted under); a record with the keys of two of the first six is ambiguous (an error):

=================  ==========================================================================================
``openai``         ``{messages: [{role, content}]}``; roles ``system``, ``user``, ``assistant``
``sharegpt``       ``{conversations: [{from, value}]}``; ``system``, ``human``/``user``, ``gpt``/``assistant``
``oasst``          an OpenAssistant message tree ``{prompt: {role, text, replies: [...]}}`` (oasst1's
                   ``*.trees.jsonl``; a bare root ``{role, text, replies}`` too); roles ``prompter``,
                   ``assistant``; flattened to root→leaf paths, by default only the best-ranked one
                   (lowest ``rank`` at each level, missing rank last, ties in file order)
``alpaca``         ``{instruction, input, output}``; prompt = instruction, then ``\\n\\n`` + input if non-empty
``dolly``          ``{instruction, context, response}``; prompt = instruction, then ``\\n\\n`` + context
``prompt_response`` ``{prompt, response}`` (optional ``system``)
``rendered``       text already in the Human/Assistant format (``{text: "### Human: …\\n### Assistant: …"}``,
                   the shared instruct corpus); its ``meta.messages`` (OpenAI roles) are used when present
=================  ==========================================================================================

A conversation is an optional system text and one or more (prompt, response) turns. Every content is
stripped of leading and trailing whitespace (the rendering puts exactly one space after each tag, SPEC §5).
Bad input raises :class:`ShapeError` (file:line named by the caller): an unknown role, an empty turn, two
turns of the same side in a row, a conversation ending on the human side (unless ``trim_unanswered``: the
unanswered last prompt is dropped and counted), a record whose shape cannot be told, non-string content.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from xgen_data.errors import InputError

HUMAN, ASSISTANT, SYSTEM = "human", "assistant", "system"
ROLES = {
    "openai": {"system": SYSTEM, "user": HUMAN, "assistant": ASSISTANT},
    "sharegpt": {"system": SYSTEM, "human": HUMAN, "user": HUMAN, "gpt": ASSISTANT, "assistant": ASSISTANT},
    "oasst": {"prompter": HUMAN, "assistant": ASSISTANT},
}
SHAPES = ("openai", "sharegpt", "oasst", "alpaca", "dolly", "prompt_response", "rendered")
_TAG = re.compile(r"(?:^|\n)### (Human|Assistant):")


class ShapeError(InputError):
    """A record that cannot become a conversation; the message says why (without file:line)."""


@dataclass(frozen=True)
class Conversation:
    """One training example: ``turns`` are (prompt, response) pairs, both stripped and non-empty."""

    turns: tuple[tuple[str, str], ...]
    system: str | None = None
    trimmed: bool = False  # an unanswered last prompt was dropped


def _text(value, what: str) -> str:
    if not isinstance(value, str):
        raise ShapeError(f"{what} must be a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # JSON's "\ud800": no UTF-8 text, so no tokens
        raise ShapeError(f"{what}: invalid UTF-8 (a lone surrogate at character {exc.start})") from None
    return value.strip()


def conversation(messages: list[tuple[str, object]], trim_unanswered: bool = False) -> Conversation:
    """Validate (side, content) messages and pair them into turns.

    ``side`` is :data:`HUMAN`, :data:`ASSISTANT` or :data:`SYSTEM` (only as the first message).

    Raises:
        ShapeError: no messages, a system message after the first, non-string or empty content, two
            messages of one side in a row, a first turn from the assistant, or a last turn from the human
            (unless ``trim_unanswered``).
    """
    system = None
    if messages and messages[0][0] == SYSTEM:
        system = _text(messages[0][1], "system content") or None
        messages = messages[1:]
    trimmed = False
    if trim_unanswered and messages and messages[-1][0] == HUMAN:
        messages, trimmed = messages[:-1], True
    if not messages:
        raise ShapeError("no human/assistant turn")
    turns, prompt = [], None
    for k, (side, content) in enumerate(messages):
        if side == SYSTEM:
            raise ShapeError(f"message {k}: a system message may only come first")
        text = _text(content, f"message {k} content")
        if not text:
            raise ShapeError(f"message {k}: empty {side} turn")
        want = HUMAN if prompt is None else ASSISTANT
        if side != want:
            raise ShapeError(f"message {k}: expected a {want} turn, got {side} (turns must alternate, starting "
                             "with the human)")
        if prompt is None:
            prompt = text
        else:
            turns.append((prompt, text))
            prompt = None
    if prompt is not None:
        raise ShapeError("the conversation ends on the human side (no response to the last prompt; "
                         "--trim-unanswered drops that prompt and keeps the rest)")
    return Conversation(tuple(turns), system, trimmed)


def _role_messages(items, shape: str, role_key: str, text_key: str) -> list[tuple[str, object]]:
    if not isinstance(items, list):
        raise ShapeError(f"{shape}: the message list must be a list, got {type(items).__name__}")
    out = []
    for k, m in enumerate(items):
        if not isinstance(m, dict):
            raise ShapeError(f"message {k} must be an object, got {type(m).__name__}")
        role = m.get(role_key)
        if role not in ROLES[shape]:
            raise ShapeError(f"message {k}: unknown role {role!r} (known: {', '.join(ROLES[shape])})")
        out.append((ROLES[shape][role], m.get(text_key)))
    return out


def _join(head, tail, what: tuple[str, str]) -> str:
    head, tail = _text(head, what[0]), _text("" if tail is None else tail, what[1])
    return f"{head}\n\n{tail}" if tail else head


def _rank(reply) -> float:
    """An OAsst reply's ``rank`` (lower is better); a missing or null rank sorts last.

    Raises:
        ShapeError: a rank that is not an integer (a string, a boolean, a fraction).
    """
    rank = reply.get("rank") if isinstance(reply, dict) else None
    if rank is None:
        return float("inf")
    if isinstance(rank, bool) or not isinstance(rank, int):
        raise ShapeError(f"oasst: 'rank' must be an integer or null, got {rank!r}")
    return rank


def _oasst_paths(node: dict, best_only: bool) -> list[list[tuple[str, object]]]:
    """Root→leaf message paths of an OAsst tree (best-ranked child only, or every leaf)."""
    if not isinstance(node, dict):
        raise ShapeError(f"oasst: a message must be an object, got {type(node).__name__}")
    role = node.get("role")
    if role not in ROLES["oasst"]:
        raise ShapeError(f"oasst: unknown role {role!r} (known: prompter, assistant)")
    here = [(ROLES["oasst"][role], node.get("text"))]
    replies = node.get("replies") or []
    if not isinstance(replies, list):
        raise ShapeError("oasst: 'replies' must be a list")
    if not replies:
        return [here]
    if best_only:
        best = min(range(len(replies)), key=lambda i: (_rank(replies[i]), i))
        replies = [replies[best]]
    return [here + tail for r in replies for tail in _oasst_paths(r, best_only)]


def parse_rendered(text) -> list[tuple[str, object]]:
    """Split text in the Human/Assistant format into (side, content) messages; text before the first tag is
    the system header."""
    text = _text(text, "text")
    parts = _TAG.split(text)
    if len(parts) < 3:
        raise ShapeError("text has no '### Human:' / '### Assistant:' turns (not an instruction record)")
    messages = [(SYSTEM, parts[0])] if parts[0].strip() else []
    for tag, content in zip(parts[1::2], parts[2::2]):
        messages.append((HUMAN if tag == "Human" else ASSISTANT, content))
    return messages


#: Each structured shape's keys: a record holding the keys of two of them is ambiguous (``rendered``, the fallback
#: on ``text``, is tried only when none matches).
_SIGNATURES = (
    ("openai", lambda r: "messages" in r),
    ("sharegpt", lambda r: "conversations" in r),
    ("oasst", lambda r: isinstance(r.get("prompt"), dict) or ("replies" in r and "role" in r)),
    ("alpaca", lambda r: "instruction" in r and "output" in r),
    ("dolly", lambda r: "instruction" in r and "response" in r),
    ("prompt_response", lambda r: "prompt" in r and "response" in r and not isinstance(r.get("prompt"), dict)),
)


def detect(record) -> str:
    """The shape name of a decoded JSON record (see the module table).

    Raises:
        ShapeError: not an object; no known shape's keys; or the keys of two shapes (e.g. ``prompt`` /
            ``response`` and ``messages``): which one is meant cannot be told, so none is guessed.
    """
    if not isinstance(record, dict):
        raise ShapeError(f"a record must be a JSON object, got {type(record).__name__}")
    matched = [name for name, has_keys in _SIGNATURES if has_keys(record)]
    if len(matched) > 1:
        raise ShapeError(f"ambiguous record: it has the keys of the shapes {', '.join(matched)} "
                         f"(keys {sorted(record)[:8]}); keep the keys of one shape only")
    if matched:
        return matched[0]
    if "text" in record:
        return "rendered"
    raise ShapeError(f"cannot tell the record's shape from its keys {sorted(record)[:8]} (known: "
                     f"{', '.join(SHAPES)})")


def conversations(record, oasst_best_only: bool = True, trim_unanswered: bool = False
                  ) -> tuple[str, list[Conversation]]:
    """Recognise a record's shape and return it with its conversations (several for an OAsst tree).

    Raises:
        ShapeError: the shape cannot be told or the record breaks a conversation rule.
    """
    shape = detect(record)
    trim = trim_unanswered
    if shape == "openai":
        return shape, [conversation(_role_messages(record["messages"], "openai", "role", "content"), trim)]
    if shape == "sharegpt":
        msgs = _role_messages(record["conversations"], "sharegpt", "from", "value")
        return shape, [conversation(msgs, trim)]
    if shape == "oasst":
        root = record["prompt"] if isinstance(record.get("prompt"), dict) else record
        return shape, [conversation(p, True) for p in _oasst_paths(root, oasst_best_only)]
    if shape == "alpaca":
        prompt = _join(record["instruction"], record.get("input"), ("instruction", "input"))
        return shape, [conversation([(HUMAN, prompt), (ASSISTANT, record["output"])])]
    if shape == "dolly":
        prompt = _join(record["instruction"], record.get("context"), ("instruction", "context"))
        return shape, [conversation([(HUMAN, prompt), (ASSISTANT, record["response"])])]
    if shape == "prompt_response":
        msgs = [(HUMAN, record["prompt"]), (ASSISTANT, record["response"])]
        if record.get("system") is not None:
            msgs.insert(0, (SYSTEM, record["system"]))
        return shape, [conversation(msgs, trim)]
    meta = record.get("meta")
    if isinstance(meta, dict) and meta.get("messages") is not None:
        return shape, [conversation(_role_messages(meta["messages"], "openai", "role", "content"), trim)]
    return shape, [conversation(parse_rendered(record["text"]), trim)]
