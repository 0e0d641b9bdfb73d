"""Test helper for xgen_train: an ``xgen-shards`` directory built from real shared sample text.

Stand-in for ``xgen mix build`` until the real builder exists: tokenizes the texts of
``/work/shared/corpus/sample/nl.jsonl`` (or ``$XGEN_SHARED/corpus/sample``) with tiktoken's GPT-2
ranks from the shared ``gpt2.tiktoken`` (data mode: special-token strings are plain text), drops
documents under 100 tokens (SPEC §2), joins documents with EOS 50256, cuts the stream into
``seq_len`` sequences, shuffles them with ``seed`` and writes them as uint16 shard files plus a
manifest in the documented format (format_version 1). Not a conftest.py: import it explicitly.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

import numpy as np

SHARED = Path(os.environ.get("XGEN_SHARED", "/work/shared"))
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOS_ID = 50256


@functools.lru_cache(maxsize=1)
def gpt2_encoding():
    import tiktoken
    import tiktoken.load

    ranks = tiktoken.load.load_tiktoken_bpe(str(SHARED / "tokenizer" / "gpt2.tiktoken"))
    return tiktoken.Encoding(name="gpt2-local", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": EOS_ID})


@functools.lru_cache(maxsize=4)
def token_stream(corpus: str = "nl", max_tokens: int = 400_000, min_doc_tokens: int = 100) -> np.ndarray:
    """uint16 stream ``doc EOS doc EOS ...`` from the first documents of a sample corpus."""
    enc = gpt2_encoding()
    parts: list[np.ndarray] = []
    total = 0
    with open(SHARED / "corpus" / "sample" / f"{corpus}.jsonl", encoding="utf-8") as fh:
        for line in fh:
            ids = enc.encode_ordinary(json.loads(line)["text"])
            if len(ids) < min_doc_tokens:
                continue
            parts.append(np.asarray(ids + [EOS_ID], dtype=np.uint16))
            total += len(ids) + 1
            if total >= max_tokens:
                break
    return np.concatenate(parts)


def build_shards(out_dir: str | os.PathLike, seq_len: int = 128, n_files: int = 2, seed: int = 1234,
                 max_tokens: int = 400_000, stage: str = "stage1", substage: str = "s1",
                 corpus: str = "nl") -> Path:
    """Write a shards directory; returns its path. Sequences are split evenly-ish over ``n_files``."""
    out = Path(out_dir)
    stream = token_stream(corpus, max_tokens)
    n_seq = len(stream) // seq_len
    seqs = stream[: n_seq * seq_len].reshape(n_seq, seq_len)
    seqs = seqs[np.random.default_rng(seed).permutation(n_seq)]
    shards = []
    for k, chunk in enumerate(np.array_split(seqs, n_files)):
        rel = f"{stage}/{substage}/shard-{k:05d}.bin"
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        data = np.ascontiguousarray(chunk, dtype="<u2").tobytes()
        path.write_bytes(data)
        shards.append({"path": rel, "index_path": rel.replace(".bin", ".idx.parquet"), "stage": stage,
                       "substage": substage, "seq_len": seq_len, "n_sequences": int(chunk.shape[0]),
                       "sha256": hashlib.sha256(data).hexdigest(),
                       "tokens_per_subset": {"natural": int(chunk.size)},
                       "tokens_per_source": {f"sample/{corpus}": int(chunk.size)}})
    manifest = {
        "format": "xgen-shards", "format_version": 1, "recipe": "test-sample", "seed": seed,
        "vocab_size": 50313, "padded_vocab_size": 51200, "eos_id": EOS_ID, "dtype": "uint16",
        "stages": [{"name": stage, "substages": [{"name": substage, "seq_len": seq_len, "n_sequences": n_seq,
                                                  "n_tokens": n_seq * seq_len}]}],
        "shards": shards,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return out


if __name__ == "__main__":  # python tests/conftest_train.py OUT_DIR [SEQ_LEN]
    import sys

    print(build_shards(sys.argv[1], seq_len=int(sys.argv[2]) if len(sys.argv) > 2 else 128))
