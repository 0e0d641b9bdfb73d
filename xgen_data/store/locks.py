"""Writer locks that refuse a second writer by name: ``flock`` on a lock file that records its holder.

A folder that one command writes (an export, a shards folder, a run folder) has exactly one writer at a
time. :func:`writer_lock` takes an exclusive, non-blocking ``flock`` on a lock file and writes the holder's
PID and host into it; a second writer is refused at once with a :class:`~xgen_data.errors.RefusedError` that
names the holder, instead of interleaving its files with the first one's. The lock file is removed when the
lock is released; a taker checks after ``flock`` that the file it locked is still the one at the path (a
holder that was releasing may have removed it), so removing it never lets two writers in. ``flock`` locks
die with their process, so a ``kill -9`` never leaves a folder locked (the stale file is taken over).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator

from xgen_data.errors import RefusedError


def holder_of(lock_path: str) -> str:
    """``"pid N on HOST"`` as recorded in ``lock_path`` by its holder (``"another process"`` if unreadable)."""
    try:
        with open(lock_path, encoding="utf-8") as f:
            pid, _, host = f.read().strip().partition(" ")
    except OSError:
        return "another process"
    return f"pid {pid} on {host}" if pid.isdigit() and host else "another process"


@contextlib.contextmanager
def writer_lock(lock_path: str, what: str) -> Iterator[None]:
    """Hold the exclusive writer lock ``lock_path`` (created, and removed on release) for ``what``.

    Args:
        lock_path: the lock file (its folder must exist), e.g. ``RUN/.lock`` or ``.OUT.lock`` beside ``OUT``.
        what: what the lock guards, for the refusal (``"run folder runs/a"``).
    Raises:
        RefusedError: another process holds it; names it (``pid 1234 on host-a``) and ``what``.
    """
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RefusedError(f"{what} is being written by {holder_of(lock_path)} (lock {lock_path}); wait for "
                               "it to finish, or stop it, then run again") from None
        try:
            same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the previous holder removed the file it locked: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock_path)  # before the unlock: a waiter that locks the old file sees it is gone
        os.close(fd)
