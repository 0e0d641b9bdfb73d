"""Hostile-user checks (bad input, damaged files, kill -9): each test is the regression test of one finding of the
robustness trial (the brief w-break), on the shared sample slice."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from xgen_data import shards


def _flip(path: str, offset: int) -> None:
    data = bytearray(open(path, "rb").read())
    data[offset] ^= 0x01
    open(path, "wb").write(bytes(data))


def test_damaged_shard_index_is_caught_by_verify_and_by_its_reader(demo_shards, tmp_path):
    """Every shard's .idx.parquet carries a SHA-256 in the manifest; `shards.verify` (so `xgen verify`) and
    `read_index` check it. Before, a flipped byte in an index went unnoticed."""
    out = str(tmp_path / "shards")
    shutil.copytree(demo_shards, out)
    m = json.load(open(os.path.join(out, "manifest.json")))
    entry = m["shards"][0]
    assert len(entry["index_sha256"]) == 64
    assert shards.verify(out) == []
    assert shards.read_index(out, entry).num_rows > 0
    idx = os.path.join(out, entry["index_path"])
    _flip(idx, os.path.getsize(idx) // 2)
    problems = shards.verify(out)
    assert len(problems) == 1 and entry["index_path"] in problems[0] and "does not match manifest" in problems[0]
    with pytest.raises(shards.ShardError, match="damaged or changed index"):
        shards.read_index(out, entry)
    os.remove(idx)
    assert "index file listed in manifest.json is missing" in shards.verify(out)[0]
