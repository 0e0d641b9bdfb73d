"""An output folder written whole or not at all: built in a temporary sibling, renamed into place.

The target must not exist, or be an empty folder; anything else (a file, a folder with files) is refused,
so an export never deletes or mixes with what it did not write. A killed run leaves only its temporary
sibling ``.<name>.tmp-<pid>``, removed by the next run into the same place once that process is gone.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator

from xgen_data.errors import RefusedError
from xgen_data.store import fsutil

TMP_TAG = ".tmp-"


def check_target(out_dir: str) -> None:
    """Refuse ``out_dir`` when it is a file or a non-empty folder (RefusedError naming it)."""
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        raise RefusedError(f"{out_dir}: exists and is not a folder; choose a new --out")
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise RefusedError(f"{out_dir}: folder is not empty; choose a new --out (nothing was written)")


def _remove_dead_leftovers(out_dir: str) -> None:
    head, tail = os.path.split(os.path.abspath(out_dir))
    prefix = f".{tail}{TMP_TAG}"
    if not os.path.isdir(head):
        return
    for name in os.listdir(head):
        pid = name[len(prefix):]
        if name.startswith(prefix) and pid.isdigit() and not fsutil.pid_alive(int(pid)):
            shutil.rmtree(os.path.join(head, name), ignore_errors=True)


@contextlib.contextmanager
def new_folder(out_dir: str) -> Iterator[str]:
    """Yield a temporary folder to fill; on success it becomes ``out_dir`` (one rename), on error it goes.

    Raises:
        RefusedError: ``out_dir`` is a file or a non-empty folder (checked before anything is written).
    """
    check_target(out_dir)
    out_dir = os.path.abspath(out_dir)
    os.makedirs(os.path.dirname(out_dir), exist_ok=True)
    _remove_dead_leftovers(out_dir)
    head, tail = os.path.split(out_dir)
    tmp = os.path.join(head, f".{tail}{TMP_TAG}{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.mkdir(tmp)
    try:
        yield tmp
        check_target(out_dir)  # nobody filled it meanwhile
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)
        os.rename(tmp, out_dir)
        dir_fd = os.open(head, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
