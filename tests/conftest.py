"""Shared fixtures: the real shared data (../shared) and a small corpus built from its sample slice."""
from __future__ import annotations

import os
import shutil

import pytest

from xgen_data.mixing import defaults

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.environ.get("XGEN_SHARED", os.path.abspath(os.path.join(HERE, "..", "..", "shared")))
SAMPLE = os.path.join(SHARED, "corpus", "sample")
RANKS = os.path.join(SHARED, "tokenizer", "gpt2.tiktoken")

# No internet in CI: the tokenizer reads the GPT-2 ranks from the shared file.
os.environ.setdefault("XGEN_GPT2_BPE", RANKS)


def shared_path(*parts: str) -> str:
    path = os.path.join(SHARED, *parts)
    if not os.path.exists(path):
        pytest.fail(f"shared data missing: {path} (set XGEN_SHARED to the shared folder)")
    return path


@pytest.fixture(scope="session")
def sample_corpus(tmp_path_factory) -> str:
    """A corpus of the shared sample slice (natural, code, instruct), filtered with the SPEC §2 defaults."""
    from xgen_data.sources import ingest

    root = str(tmp_path_factory.mktemp("sample") / "corpus")
    ingest.ingest(root, [(shared_path("corpus", "sample", f), None)
                         for f in ("nl.jsonl", "code.jsonl", "instruct.jsonl")], workers=1, progress=False)
    defaults.run_filters(root)
    return root


def demo_code_only():
    """The demo recipe with stage 2's ``starcoder`` tokens taken from ``code`` instead (policy permissive, no
    language weights): the same budgets for corpora without a starcoder subset, such as the shared sample.
    Its stage-2 targets equal the demo's earlier proportions (natural 124,925 + code 137,219 of 262,144)."""
    import dataclasses

    from xgen_data.mixing import recipe

    r = recipe.load("demo")
    stages = []
    for st in r.stages:
        if "starcoder" in st.proportions:
            t = dict(st.targets)
            t["code"] = t.get("code", 0) + t.pop("starcoder")
            st = dataclasses.replace(st, targets=t, proportions={k: v / st.tokens for k, v in t.items()}, replay=None,
                                     licenses={}, languages={})
        stages.append(st)
    return dataclasses.replace(r, stages=tuple(stages))


def demo_no_dedup():
    """The demo recipe (code only, :func:`demo_code_only`) without dedup: its decisions need only the license
    attributes the fixture computed."""
    import dataclasses

    return dataclasses.replace(demo_code_only(), dedup={"enabled": False})


@pytest.fixture(scope="session")
def demo_shards(sample_corpus, tmp_path_factory) -> str:
    """Shards of the demo recipe built from the sample corpus (no dedup: packing tests stand alone)."""
    from xgen_data.shards import packing

    out = str(tmp_path_factory.mktemp("shards") / "shards")
    packing.build(sample_corpus, demo_no_dedup(), out, progress=False)
    return out


@pytest.fixture()
def corpus_copy(sample_corpus, tmp_path) -> str:
    """A private copy of the sample corpus that a test may change."""
    dst = str(tmp_path / "corpus")
    shutil.copytree(sample_corpus, dst)
    return dst
