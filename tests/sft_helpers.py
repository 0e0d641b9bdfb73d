"""Test helper: small SFT shards (``xgen-sft-shards``) from the shared instruct sample.

Each record's first ``user``/``assistant`` pair of ``meta.messages`` is rendered as SPEC §5's
``### Human: {prompt}\\n### Assistant: {response}<EOS>`` (prompt part and response part tokenized separately;
the exact rendering and its id agreement are the SFT data branch's job), the mask set on the response and its
EOS, and examples packed first-fit into ``seq_len`` rows (segments 1..k, padding 0).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from conftest import SHARED

from xgen_data import tokenizer
from xgen_train.loop.sft_data import write_sft_shards

EOS_ID = tokenizer.EOS_ID


def instruct_examples(limit: int, max_tokens: int) -> list[tuple[list[int], list[int]]]:
    """``(prompt ids, response ids + EOS)`` of the first ``limit`` examples of the sample that fit ``max_tokens``."""
    out = []
    for line in (Path(SHARED) / "corpus" / "sample" / "instruct.jsonl").read_text(encoding="utf-8").splitlines():
        msgs = (json.loads(line).get("meta") or {}).get("messages") or []
        user = next((m["content"] for m in msgs if m.get("role") == "user"), None)
        bot = next((m["content"] for m in msgs if m.get("role") == "assistant"), None)
        if not user or not bot:
            continue
        prompt = tokenizer.encode(f"### Human: {user}\n### Assistant:")
        response = tokenizer.encode(f" {bot}") + [EOS_ID]
        if len(prompt) + len(response) <= max_tokens:
            out.append((prompt, response))
        if len(out) == limit:
            break
    return out


def pack_rows(examples, seq_len: int) -> dict[str, np.ndarray]:
    """First-fit packing of whole examples into rows: ``{tokens, loss_mask, segment_ids}`` ``[n, seq_len]``."""
    rows: list[list[tuple[list[int], list[int]]]] = []
    for ex in examples:
        n = len(ex[0]) + len(ex[1])
        row = next((r for r in rows if sum(len(p) + len(q) for p, q in r) + n <= seq_len), None)
        (row.append(ex) if row is not None else rows.append([ex]))
    arrays = {k: np.zeros((len(rows), seq_len), np.int64) for k in ("tokens", "loss_mask", "segment_ids")}
    for i, row in enumerate(rows):
        t = 0
        for seg, (p, q) in enumerate(row, start=1):
            ids = p + q
            arrays["tokens"][i, t:t + len(ids)] = ids
            arrays["loss_mask"][i, t + len(p):t + len(ids)] = 1
            arrays["segment_ids"][i, t:t + len(ids)] = seg
            t += len(ids)
    return arrays


def build_sft_shards(out_dir, seq_len: int = 64, n_examples: int = 60, n_validation_rows: int = 4) -> Path:
    """SFT shards of the first ``n_examples`` short instruct examples; the last rows are the validation split."""
    rows = pack_rows(instruct_examples(n_examples, seq_len), seq_len)
    n = len(rows["tokens"]) - n_validation_rows
    splits = {"train": {k: v[:n] for k, v in rows.items()}}
    if n_validation_rows:
        splits["validation"] = {k: v[n:] for k, v in rows.items()}
    write_sft_shards(out_dir, splits, eos_id=EOS_ID, vocab_size=tokenizer.VOCAB_SIZE, rows_per_shard=16,
                     extra={"source": "tests/sft_helpers.py"})
    return Path(out_dir)
