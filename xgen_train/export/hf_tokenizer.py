"""The XGen tokenizer (SPEC §1) as Hugging Face ``tokenizers`` files, built from the tiktoken ranks.

:func:`tokenizer_json` returns the content of a ``tokenizer.json`` (the ``tokenizers`` library's
serialisation, format "1.0") that encodes text to exactly the ids of :func:`xgen_data.tokenizer.encode`:

* pre-tokenizer: a ``Split`` on GPT-2's original pattern (SPEC §1) with ``Isolated`` behaviour, then
  ``ByteLevel`` (no regex of its own, no prefix space) mapping bytes to GPT-2's printable alphabet;
* model: byte-level ``BPE`` whose vocabulary is every XGen token (the 50,256 GPT-2 ranks, the 38
  whitespace-run ranks 50257..50294, the 19 special tokens) and whose merges reproduce tiktoken's rank
  order. ``ignore_merges`` is on: like tiktoken, a pre-token that is itself a token is emitted whole;
* ``added_tokens``: ``<|endoftext|>`` (50256) and the 18 code tokens (50295..50312), ``special``;
  the ``tokenizers`` library matches them in the raw text before pre-tokenization, so the default
  encoding is SPEC §1's *HF-compatible* mode; with ``split_special_tokens=True`` (transformers) it is
  *data* mode.

Merges. tiktoken's BPE repeatedly merges the adjacent pair whose concatenation has the lowest rank
(leftmost first on ties); ``tokenizers`` merges the adjacent pair that comes first in the merge list.
The two agree when the merge list is ordered by the rank of the merged token and each token's merge is
the split tiktoken itself takes to build it:

* a GPT-2 rank ``r`` (>= 256): its two parts are what tiktoken's BPE gives for the token's bytes using
  only ranks below ``r`` (the standard conversion of tiktoken ranks; GPT-2's ranks were trained by BPE,
  so exactly two parts remain);
* a whitespace run of ``n`` spaces (or tabs): ``(n-1 run, 1 char)``. tiktoken grows a run from the left
  one character at a time because the longer run has the lower rank (31 spaces = 50257 < 30 spaces ...);
  listing ``(n-1, 1) -> n`` in rank order (longest first) makes ``tokenizers`` do the same.

No file outside the GPT-2 ranks is read; the ``tokenizers`` library is not needed to build the files
(only to use them).
"""
from __future__ import annotations

import functools

from xgen_data import tokenizer as xtok
from xgen_data.sft import render

__all__ = ["CHAT_TEMPLATE", "bytes_to_unicode", "special_tokens_map", "tokenizer_config", "tokenizer_json"]


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (as in OpenAI's ``encoder.py``).

    Printable Latin-1 bytes map to themselves; the other 68 bytes map to U+0100 upward in byte order.
    """
    keep = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
            + list(range(ord("®"), ord("ÿ") + 1)))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _to_str(token: bytes) -> str:
    table = bytes_to_unicode()
    return "".join(table[b] for b in token)


def _bpe_parts(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    """tiktoken's merge loop on ``token``'s bytes using only ranks ``< max_rank``."""
    parts = [bytes([b]) for b in token]
    while True:
        best, best_rank = None, None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < max_rank and (best_rank is None or r < best_rank):
                best, best_rank = i, r
        if best is None:
            return parts
        parts = parts[:best] + [parts[best] + parts[best + 1]] + parts[best + 2:]


@functools.lru_cache(maxsize=1)
def _vocab_and_merges() -> tuple[dict[str, int], list[list[str]]]:
    enc = xtok.get_encoding()
    ranks: dict[bytes, int] = dict(enc._mergeable_ranks)  # GPT-2 ranks + whitespace runs
    by_rank = sorted(ranks.items(), key=lambda kv: kv[1])
    vocab: dict[str, int] = {}
    merges: list[list[str]] = []
    runs = set(xtok.WHITESPACE_RUNS)
    for token, rank in by_rank:
        vocab[_to_str(token)] = rank
        if len(token) == 1:
            continue
        if token in runs:
            left, right = token[:-1], token[-1:]
        else:
            parts = _bpe_parts(ranks, token, rank)
            if len(parts) != 2:
                raise xtok.TokenizerError(f"rank {rank} ({token!r}) is not the merge of two lower ranks")
            left, right = parts
        merges.append([_to_str(left), _to_str(right)])
    for text, tid in enc._special_tokens.items():
        if text in vocab:
            raise xtok.TokenizerError(f"special token {text!r} collides with a byte-level BPE token")
        vocab[text] = tid
    if sorted(vocab.values()) != list(range(xtok.VOCAB_SIZE)):
        raise xtok.TokenizerError(f"vocabulary ids must be exactly 0..{xtok.VOCAB_SIZE - 1}")
    return vocab, merges


def _special_tokens() -> list[tuple[str, int]]:
    enc = xtok.get_encoding()
    return sorted(enc._special_tokens.items(), key=lambda kv: kv[1])


def tokenizer_json() -> dict:
    """Content of ``tokenizer.json`` for the XGen tokenizer (50,313 tokens; SPEC §1). See the module doc.

    Raises:
        xgen_data.tokenizer.TokenizerError: the GPT-2 ranks cannot be loaded or are not BPE-consistent.
    """
    vocab, merges = _vocab_and_merges()
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": tid, "content": text, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
            for text, tid in _special_tokens()
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": xtok.GPT2_PATTERN}, "behavior": "Isolated", "invert": False},
            byte_level,
        ]},
        "post_processor": None,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                  "vocab": vocab, "merges": merges},
    }


EOS_TEXT = "<|endoftext|>"

#: transformers' ``chat_template`` (Jinja) for XGen's instruction format (SPEC §5, :mod:`xgen_data.sft.render`):
#: ``[{system}\n\n]### Human: {p1}\n### Assistant: {r1}<|endoftext|>\n### Human: {p2}…``, contents stripped, a
#: system message (first only) rendered as the header, and ``add_generation_prompt`` opening the assistant turn
#: (``\n### Assistant:``, no space: the space belongs to the first response token). Tokenized by
#: ``apply_chat_template`` (special tokens parsed, no BOS), it gives exactly xgen's training ids whenever no
#: content holds a special-token string such as a literal ``<|endoftext|>`` (xgen reads those as text).
CHAT_TEMPLATE = (
    "{%- set ns = namespace(turn=0) -%}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'system' -%}"
    "{%- if not loop.first -%}{{ raise_exception('a system message may only come first') }}{%- endif -%}"
    "{{ m['content'] | trim }}{{ '\\n\\n' }}"
    "{%- elif m['role'] == 'user' -%}"
    "{%- if ns.turn % 2 != 0 -%}{{ raise_exception('turns must alternate, starting with the user') }}{%- endif -%}"
    "{%- if ns.turn > 0 -%}{{ '\\n' }}{%- endif -%}"
    "{{ '" + render.HUMAN_TAG + " ' }}{{ m['content'] | trim }}"
    "{%- set ns.turn = ns.turn + 1 -%}"
    "{%- elif m['role'] == 'assistant' -%}"
    "{%- if ns.turn % 2 != 1 -%}{{ raise_exception('turns must alternate, starting with the user') }}{%- endif -%}"
    "{{ '\\n" + render.ASSISTANT_TAG + " ' }}{{ m['content'] | trim }}{{ eos_token }}"
    "{%- set ns.turn = ns.turn + 1 -%}"
    "{%- else -%}{{ raise_exception('unknown role ' + m['role']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '\\n" + render.ASSISTANT_TAG + "' }}{%- endif -%}"
)


def special_tokens_map() -> dict:
    """``special_tokens_map.json``: BOS = EOS = UNK = PAD = ``<|endoftext|>`` (id 50256, SPEC §1), and the
    18 code tokens as additional special tokens."""
    return {"bos_token": EOS_TEXT, "eos_token": EOS_TEXT, "unk_token": EOS_TEXT, "pad_token": EOS_TEXT,
            "additional_special_tokens": list(xtok.CODE_SPECIAL_TOKENS)}


def tokenizer_config(model_max_length: int) -> dict:
    """``tokenizer_config.json`` for ``AutoTokenizer``: the fast tokenizer of ``tokenizer.json``, no BOS
    prepended and no EOS appended (SPEC §1), no clean-up of spaces on decode (exact round trip), and the
    :data:`CHAT_TEMPLATE` of XGen's instruction format (SPEC §5)."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": int(model_max_length),
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "padding_side": "left",
        "chat_template": CHAT_TEMPLATE,
        **special_tokens_map(),
    }
