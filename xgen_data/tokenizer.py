"""The XGen tokenizer (SPEC §1): GPT-2 byte-level BPE plus whitespace-run ranks and code special tokens.

Two modes encode the same text:

* *data* mode (default, for corpus work): every special-token string inside a document is plain text,
  so ``"<|endoftext|>"`` in a document never becomes id 50256. EOS is inserted by id by the packer.
* *HF-compatible* mode: reproduces the published Hugging Face wrapper of XGen-7B, which encodes with all
  special tokens allowed (a literal ``<|endoftext|>`` becomes 50256, ``<fim_prefix>`` becomes 50295).

The GPT-2 ranks come from tiktoken's ``gpt2`` encoding, or from a local ``.tiktoken`` file named by the
environment variable ``XGEN_GPT2_BPE`` (machines without internet).
"""
from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import numpy as np
import tiktoken
import tiktoken.load

from xgen_data.errors import InputError

#: GPT-2's original pre-tokenizer pattern (SPEC §1).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOS_ID = 50256
N_GPT2_RANKS = 50256
#: Whitespace runs added as mergeable ranks: 31..2 spaces (50257..50286), then 9..2 tabs (50287..50294).
WHITESPACE_RUNS: tuple[bytes, ...] = tuple(b" " * n for n in range(31, 1, -1)) + tuple(
    b"\t" * n for n in range(9, 1, -1)
)
#: Special tokens in id order from 50295 (SPEC §1).
CODE_SPECIAL_TOKENS: tuple[str, ...] = (
    "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>", "<filename>", "<gh_stars>",
    "<issue_start>", "<issue_comment>", "<issue_closed>", "<jupyter_start>", "<jupyter_text>",
    "<jupyter_code>", "<jupyter_output>", "<empty_output>", "<commit_before>", "<commit_msg>",
    "<commit_after>", "<reponame>",
)
FIRST_SPECIAL_ID = N_GPT2_RANKS + 1 + len(WHITESPACE_RUNS)  # 50295
VOCAB_SIZE = FIRST_SPECIAL_ID + len(CODE_SPECIAL_TOKENS)  # 50313 real tokens
PADDED_VOCAB_SIZE = 51200  # embedding rows (SPEC §1, §3)
ENV_RANKS = "XGEN_GPT2_BPE"


class TokenizerError(InputError):
    """Raised when the GPT-2 ranks cannot be loaded or ids cannot be decoded."""


def _load_gpt2_ranks() -> dict[bytes, int]:
    path = os.environ.get(ENV_RANKS)
    if path:
        if not os.path.isfile(path):
            raise TokenizerError(f"{ENV_RANKS}={path!r}: no such file (expected GPT-2 ranks in .tiktoken format)")
        try:
            ranks = tiktoken.load.load_tiktoken_bpe(path)
        except Exception as exc:  # malformed base64 or lines
            raise TokenizerError(f"{ENV_RANKS}={path!r}: not a .tiktoken ranks file: {exc}") from exc
    else:
        try:
            ranks = dict(tiktoken.get_encoding("gpt2")._mergeable_ranks)
        except Exception as exc:
            raise TokenizerError(
                f"cannot load tiktoken's gpt2 ranks ({exc}); offline, set {ENV_RANKS} to a local gpt2.tiktoken file"
            ) from exc
    if len(ranks) != N_GPT2_RANKS or sorted(ranks.values()) != list(range(N_GPT2_RANKS)):
        raise TokenizerError(f"GPT-2 ranks must be exactly ids 0..{N_GPT2_RANKS - 1}; got {len(ranks)} ranks")
    return ranks


@functools.lru_cache(maxsize=None)
def get_encoding() -> tiktoken.Encoding:
    """Return the XGen tiktoken ``Encoding`` (50,313 tokens; SPEC §1). Cached per process.

    Raises:
        TokenizerError: the ranks file named by ``XGEN_GPT2_BPE`` is missing or malformed, or tiktoken
            cannot download the ``gpt2`` ranks.
    """
    ranks = _load_gpt2_ranks()
    for i, run in enumerate(WHITESPACE_RUNS):
        if run in ranks:
            raise TokenizerError(f"GPT-2 ranks unexpectedly contain the whitespace run {run!r}")
        ranks[run] = N_GPT2_RANKS + 1 + i
    special = {"<|endoftext|>": EOS_ID}
    special.update({tok: FIRST_SPECIAL_ID + i for i, tok in enumerate(CODE_SPECIAL_TOKENS)})
    return tiktoken.Encoding(
        name="xgen", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens=special,
        explicit_n_vocab=VOCAB_SIZE,
    )


def encode(text: str, hf_compat: bool = False) -> list[int]:
    """Encode one document to XGen token ids (no BOS, no EOS appended; SPEC §1).

    Args:
        text: the document as a Python ``str``.
        hf_compat: False (data mode): special-token strings are plain text. True: all special tokens
            allowed, as the Hugging Face XGen wrapper does.
    Returns:
        list of int ids in ``[0, 50313)``.
    """
    enc = get_encoding()
    if hf_compat:
        return enc.encode(text, allowed_special="all")
    return enc.encode_ordinary(text)


def encode_to_arrays(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Data-mode encode ``texts`` into a flat token array and per-document lengths.

    Uses tiktoken's buffer interface (no Python int lists), with no special token allowed, which is
    exactly data mode (``encode_ordinary``).

    Returns:
        ``(tokens, lengths)``: ``tokens`` uint16 of shape ``[sum(lengths)]`` (ids fit in uint16, SPEC §1),
        ``lengths`` int32 of shape ``[len(texts)]``.
    """
    enc = get_encoding()
    arrays = [enc.encode_to_numpy(t, allowed_special=set(), disallowed_special=()) for t in texts]
    lengths = np.fromiter(map(len, arrays), dtype=np.int32, count=len(arrays))
    flat = np.concatenate(arrays).astype(np.uint16) if arrays else np.zeros(0, np.uint16)
    return flat, lengths


def decode(ids: Sequence[int]) -> str:
    """Decode XGen ids to text. Invalid UTF-8 byte sequences are replaced with U+FFFD.

    Raises:
        TokenizerError: an id is outside the 50,313 real tokens (e.g. a vocabulary padding row).
    """
    bad = [i for i in ids if not 0 <= int(i) < VOCAB_SIZE]
    if bad:
        raise TokenizerError(f"ids outside the XGen vocabulary [0, {VOCAB_SIZE}): {bad[:5]}")
    return get_encoding().decode([int(i) for i in ids])
