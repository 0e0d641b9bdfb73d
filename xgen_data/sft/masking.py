"""Tokenize a rendered example and mark its training targets (SPEC §5 loss mask).

The ids of an example are ``encode(piece_1) + [EOS] + encode(piece_2) + [EOS] + …`` in data mode (SPEC §1),
which is what the tokenizer gives for the whole rendered text with EOS inserted by id: nothing is tokenized
segment by segment inside a piece, so a prompt/response boundary never changes the tokens (no drift between
training and chat). The loss mask is 1 on every token holding a byte of a response and on the EOS that ends
each response, 0 elsewhere. The single space after ``### Assistant:`` merges with the response's first word
under GPT-2's pre-tokenizer (``" Hello"``), so that token is a target; the tag itself (``###``,
`` Assistant``, ``:``) never is, because ``:`` is always split from the following space.
"""
from __future__ import annotations

import functools

import numpy as np

from xgen_data.sft.render import Piece
from xgen_data.tokenizer import EOS_ID, VOCAB_SIZE, get_encoding


@functools.lru_cache(maxsize=1)
def token_byte_lengths() -> np.ndarray:
    """UTF-8 byte length of every real token id: int32 ``[50313]`` (special tokens: their string's length)."""
    enc = get_encoding()
    return np.array([len(enc.decode_single_token_bytes(i)) for i in range(VOCAB_SIZE)], dtype=np.int32)


def encode_pieces(pieces: list[Piece], open_tail: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and loss mask of a rendered example.

    Args:
        pieces: the example's pieces (:func:`xgen_data.sft.render.pieces`), each followed by one EOS.
        open_tail: text after the last EOS (a chat prompt's open turn), encoded with mask 0; None for training.
    Returns:
        ``(ids, mask)``: uint16 and uint8 arrays of the same length.
    """
    enc = get_encoding()
    lengths = token_byte_lengths()
    ids_parts, mask_parts = [], []
    for piece in pieces:
        ids = np.asarray(enc.encode_to_numpy(piece.text, allowed_special=set(), disallowed_special=()),
                         dtype=np.int64)
        ends = np.cumsum(lengths[ids])
        start = len(piece.text.encode("utf-8")) - len(piece.response.encode("utf-8"))
        ids_parts += [ids, np.array([EOS_ID])]
        mask_parts += [ends > start, np.array([True])]
    if open_tail is not None:
        tail = np.asarray(enc.encode_to_numpy(open_tail, allowed_special=set(), disallowed_special=()), np.int64)
        ids_parts.append(tail)
        mask_parts.append(np.zeros(len(tail), bool))
    if not ids_parts:
        return np.zeros(0, np.uint16), np.zeros(0, np.uint8)
    return np.concatenate(ids_parts).astype(np.uint16), np.concatenate(mask_parts).astype(np.uint8)
