"""Test helper for xgen_train: a shards directory built by the real builder from real shared text.

Ingests the shared sample natural-language slice, applies the SPEC §2 filters and packs it with
:func:`xgen_data.shards.packing.build` under a one-stage recipe written for the requested ``seq_len``.
Not a conftest.py: import it explicitly.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

from conftest import SHARED as _SHARED

from xgen_data import tokenizer
from xgen_data.mixing import defaults, recipe
from xgen_data.shards import packing
from xgen_data.sources import ingest

SHARED = Path(_SHARED)
EOS_ID = tokenizer.EOS_ID


def build_shards(out_dir: str | os.PathLike, seq_len: int = 128, n_files: int = 2, seed: int = 1234,
                 max_tokens: int = 400_000, stage: str = "stage1", substage: str = "s1",
                 corpus: str = "nl") -> Path:
    """Write a shards directory of about ``max_tokens`` tokens in ``n_files`` files; returns its path."""
    out = Path(out_dir)
    work = out.parent / f".{out.name}-corpus"
    ingest.ingest(str(work), [(str(SHARED / "corpus" / "sample" / f"{corpus}.jsonl"), "natural")], workers=1,
                  progress=False)
    defaults.run_filters(str(work))
    n_seq = max_tokens // seq_len
    toml = out.parent / f".{out.name}-recipe.toml"
    toml.write_text(f"name = 'test-sample'\nseed = {seed}\n[dedup]\nenabled = false\n[[stages]]\nname = '{stage}'\n"
                    f"proportions = {{ natural = 1.0 }}\n[[stages.substages]]\nname = '{substage}'\n"
                    f"seq_len = {seq_len}\ntokens = {n_seq * seq_len}\n")
    packing.build(str(work), recipe.load(str(toml)), str(out),
                  shard_tokens=math.ceil(n_seq / n_files) * seq_len, progress=False)
    return out


def build_curriculum_shards(out_dir: str | os.PathLike, substages=(("s64", 64, 40, 8), ("s128", 128, 24, 8)),
                            stages: int = 1, seed: int = 1234, corpus: str = "nl") -> Path:
    """A multi-sub-stage shards directory from real text: ``substages`` = ``(name, seq_len, sequences,
    heldout_sequences)`` per sub-stage, repeated for ``stages`` stages (``stage1``, ``stage2``, ...)."""
    out = Path(out_dir)
    work = out.parent / f".{out.name}-corpus"
    ingest.ingest(str(work), [(str(SHARED / "corpus" / "sample" / f"{corpus}.jsonl"), "natural")], workers=1,
                  progress=False)
    defaults.run_filters(str(work))
    lines = [f"name = 'test-curriculum'\nseed = {seed}\n[dedup]\nenabled = false\n"]
    for k in range(1, stages + 1):
        lines.append(f"[[stages]]\nname = 'stage{k}'\nproportions = {{ natural = 1.0 }}\n")
        for name, seq_len, n_seq, heldout in substages:
            lines.append(f"[[stages.substages]]\nname = '{name}'\nseq_len = {seq_len}\ntokens = {n_seq * seq_len}\n"
                         f"heldout_sequences = {heldout}\n")
    toml = out.parent / f".{out.name}-recipe.toml"
    toml.write_text("\n".join(lines))
    packing.build(str(work), recipe.load(str(toml)), str(out), shard_tokens=4096, progress=False)
    return out
