"""One writer per run folder: ``xgen train`` holds ``RUN/.lock`` while it writes the run's files.

Two runs on one ``--out`` would interleave ``metrics.jsonl`` (Figure 1 would mix two runs) and race on the
checkpoints; the second is refused at start, naming the holder (PID, host), by the same writer lock as every
published folder (:func:`xgen_data.store.locks.writer_lock`). Only process 0 of a multi-host run writes the
run folder, so only it takes the lock.
"""
from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator

from xgen_data.store import locks
from xgen_train.scale.distributed import is_main_process, maybe_initialize

LOCK_FILE = ".lock"


@contextlib.contextmanager
def run_lock(out_dir: str | os.PathLike) -> Iterator[None]:
    """Hold the run folder's writer lock (the folder is created if needed; one created here and left empty,
    e.g. by a run refused before writing anything, is removed again).

    Raises:
        RefusedError: another process holds the run folder (names its PID and host).
    """
    out = os.path.abspath(out_dir)
    created = not os.path.isdir(out)
    os.makedirs(out, exist_ok=True)
    try:
        with locks.writer_lock(os.path.join(out, LOCK_FILE), f"run folder {out_dir}"):
            yield
    finally:
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(out)  # only when empty: a run that wrote nothing leaves no folder


def holds_run_lock(train_fn):
    """Decorate ``fn(config, out_dir, ...)`` (the trainer's entry) to run under :func:`run_lock` of
    ``out_dir`` on process 0 (multi-host: the others write no run files)."""

    @functools.wraps(train_fn)
    def wrapper(config, out_dir, *args, **kwargs):
        maybe_initialize()  # before any device use; idempotent
        if not is_main_process():
            return train_fn(config, out_dir, *args, **kwargs)
        with run_lock(out_dir):
            return train_fn(config, out_dir, *args, **kwargs)

    return wrapper
