"""Ingest on the step contract (xgen_data/execute/contract.py): one item per input file, committed in input
order. Items are independent (running them in reverse order commits the same bytes); a failing item is
reported naming the file and the record; the inputs before it stay committed."""
from __future__ import annotations

import hashlib
import json
import os

import pytest

from xgen_data.execute.local import LocalExecutor
from xgen_data.sources import ingest, readers
from xgen_data.store.corpus import Corpus


class ReverseExecutor:
    """Runs the items last to first in this process (results still in item order); records the keys it ran."""

    def __init__(self) -> None:
        self.ran: list[str] = []

    def map(self, step_name, fn, items, progress=None):
        done = {}
        for i in reversed(range(len(items))):
            self.ran.append(items[i].key)
            done[i] = fn(*items[i].args)
        for i in range(len(items)):
            yield done[i]

    def close(self) -> None:
        pass


def _jsonl(path, rows) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _committed(root) -> dict[str, str]:
    """SHA-256 of every part, and the registry (read as JSON: it is written with the same bytes)."""
    out = {}
    for folder, _, files in os.walk(os.path.join(root, "docs")):
        for f in files:
            out[os.path.relpath(os.path.join(folder, f), root)] = hashlib.sha256(
                open(os.path.join(folder, f), "rb").read()).hexdigest()
    out["corpus.json"] = hashlib.sha256(open(os.path.join(root, "corpus.json"), "rb").read()).hexdigest()
    return out


@pytest.fixture
def overlapping(tmp_path, monkeypatch):
    """Three inputs whose ids overlap (b repeats five of a's, c one of b's and one of its own), small parts."""
    monkeypatch.setattr(ingest, "PART_DOCS", 4)
    monkeypatch.setattr(ingest, "BATCH_DOCS", 3)
    raw = tmp_path / "raw"
    a = _jsonl(raw / "a.jsonl", [{"id": f"d{i}", "text": f"first file document {i}"} for i in range(10)])
    b = _jsonl(raw / "b.jsonl", [{"id": f"d{i}", "text": f"second file document {i}"} for i in range(5, 15)])
    c = _jsonl(raw / "c.jsonl", [{"id": i, "text": f"third file document {i}"} for i in ("d14", "e1", "e2", "e1")])
    return [(p, "code") for p in (a, b, c)]


@pytest.mark.parametrize("slices", [1, 3])
def test_ingest_items_in_reverse_order_commit_the_same_bytes(tmp_path, overlapping, monkeypatch, slices):
    """Also with each input split into 3 items (every third batch each): the same parts as one item."""
    ref = str(tmp_path / "ref")
    reports = ingest.ingest(ref, overlapping, workers=1, on_error="skip", progress=False)
    assert [r.n_written for r in reports] == [10, 5, 2]  # the later copies of an id are dropped, in input order
    corpus = Corpus(str(tmp_path / "rev"), create=True)
    executor = ReverseExecutor()
    monkeypatch.setattr(ingest, "SLICE_BYTES", 10)
    with corpus.lock():
        step = ingest.IngestStep(corpus, [(p, s, None) for p, s in overlapping], on_error="skip", progress=False,
                                 max_slices=slices)
        reversed_reports = ingest.run_ingest_step(step, executor)
    keys = [f"input {p}" + (f" (batches {k} mod 3)" if slices > 1 else "") for p, _ in overlapping for k in range(slices)]
    assert executor.ran == keys[::-1]
    assert [r.n_written for r in reversed_reports] == [10, 5, 2]
    assert _committed(corpus.root) == _committed(ref)
    assert len([k for k in _committed(ref) if k.endswith(".parquet")]) == 2 + 2 + 1
    assert not os.path.exists(ingest.work_dir(corpus))  # the batch files are gone


def test_failing_item_names_file_and_record_and_keeps_the_inputs_before(tmp_path):
    """On 2 worker processes: input 2's bad record is raised as the record's error (names file and line,
    crossing the process boundary); input 1 is committed, input 3 is not."""
    raw = tmp_path / "raw"
    first = _jsonl(raw / "one.jsonl", [{"id": f"a{i}", "text": f"document {i}"} for i in range(5)])
    bad = raw / "two.jsonl"
    bad.write_text('{"id": "b0", "text": "fine"}\n{"id": "b1", "text": 7}\n')
    third = _jsonl(raw / "three.jsonl", [{"id": "c0", "text": "never committed"}])
    root = str(tmp_path / "c")
    with pytest.raises(readers.RecordError, match=rf"{bad}:2: 'text' is int, expected a string") as err:
        ingest.ingest(root, [(first, "x"), (str(bad), "x"), (third, "x")], workers=2, progress=False)
    assert (err.value.file, err.value.line) == (str(bad), 2)
    (entry,) = Corpus(root).read_meta()["inputs"].values()
    assert entry["path"] == first and entry["n_docs"] == 5
    assert not os.path.exists(os.path.join(root, "work", "ingest"))


def test_local_executor_raises_a_failed_item_at_its_place(tmp_path):
    from xgen_data.execute.contract import ItemError, WorkItem

    items = [WorkItem(f"item {i}", (str(tmp_path), i)) for i in range(4)]
    got = []
    with pytest.raises(ItemError, match=r"toy: item item 2 failed: .*item 2 is bad"):
        for result in LocalExecutor(2).map("toy", _slow_first_fail_third, items):
            got.append(result.key)
    assert got == ["item 0", "item 1"]  # the slow first item is yielded before the fast failure is raised


def _slow_first_fail_third(folder: str, i: int):
    import time

    from xgen_data.execute.contract import ItemResult

    if i == 0:
        time.sleep(2)
    if i == 2:
        raise ValueError(f"item {i} is bad")
    return ItemResult(f"item {i}")


def test_split_input_raises_the_first_problem_in_file_order(tmp_path, monkeypatch):
    """Split into 3 items, the second batch (item 1) repeats an id and the third (item 2) has a bad record: the
    duplicate, first in the file, is raised, as a single item would."""
    monkeypatch.setattr(ingest, "BATCH_DOCS", 3)
    monkeypatch.setattr(ingest, "SLICE_BYTES", 10)
    raw = tmp_path / "raw"
    first = _jsonl(raw / "a.jsonl", [{"id": f"d{i}", "text": f"document {i}"} for i in range(3)])
    rows = [json.dumps({"id": f"e{i}", "text": f"other {i}"}) for i in range(9)]
    rows[4] = json.dumps({"id": "d1", "text": "a repeated id"})
    rows[7] = "{not json"
    second = raw / "b.jsonl"
    second.write_text("\n".join(rows) + "\n")
    corpus = Corpus(str(tmp_path / "c"), create=True)
    with corpus.lock(), pytest.raises(readers.RecordError, match=rf"{second}:5: duplicate id 'd1' \(first at {first}:2"):
        step = ingest.IngestStep(corpus, [(first, "x", None), (str(second), "x", None)], progress=False, max_slices=3)
        assert len(step.items()) == 3 + 3
        ingest.run_ingest_step(step, ReverseExecutor())
