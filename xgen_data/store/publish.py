"""Publish a folder crash-safely: the one write-and-swap helper of every command that writes a whole folder.

A command that (re)writes a folder ``OUT`` (``xgen mix build``'s shards, ``xgen export hf``) does it through a
:class:`FolderPublisher`::

    with FolderPublisher(out, listed_files=..., is_complete=..., what="shards folder",
                         crash_prefix="build") as pub:
        pub.check_foreign()          # refuse an OUT holding files the writer did not write
        tmp = pub.begin()            # an empty temporary sibling .OUT.tmp-<pid>
        ... write every file into tmp ...
        pub.commit()                 # swap tmp in; the previous OUT is deleted only after

The contract, for any ``kill -9`` at any point:

* **A complete folder is in place or restorable.** :meth:`commit` swaps with two renames: the previous
  ``OUT`` -> the backup ``.OUT.backup``, then ``tmp`` -> ``OUT``, then the backup is deleted. A crash between
  the renames leaves ``OUT`` missing and the previous folder in the backup; the next publisher of ``OUT``
  renames it back (:func:`recover`) before anything else, and deletes backups only once ``OUT`` holds a
  complete folder (``is_complete``), so both copies never go.
* **Leftovers of killed runs are removed**: temporary folders ``.OUT.tmp-<pid>`` of processes that are gone
  (or, under the lock, any whose suffix is not a PID: no live writer owns it).
* **Nothing foreign is deleted**: an existing non-empty ``OUT`` is replaced only when every file in it is one
  the writer's own file list names (``listed_files``, read from the folder's manifest); otherwise
  :class:`~xgen_data.errors.RefusedError` lists the foreign files.
* **Never into its own inputs or a filesystem root**: ``out_dir`` is resolved first (a symbolic link named as
  the output is kept and the folder it points to is written: :func:`resolve_out_dir`); a root (no parent to
  hold the temporary sibling) or a folder equal to, inside or containing one the writer reads (``inputs``) is
  refused (:class:`~xgen_data.errors.RefusedError`) before anything is written.
* **One writer at a time**: :func:`xgen_data.store.locks.writer_lock` on ``.OUT.lock`` (removed after), so a
  second writer is refused naming the first (PID, host).

Commit points (``fsutil.crash_point``, killed there when ``XGEN_CRASH_AT`` names them):
``<prefix>.before_swap``, ``<prefix>.after_backup``, ``<prefix>.after_swap``.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable

from xgen_data.errors import InputError, RefusedError
from xgen_data.store import fsutil, locks

#: ``listed_files(folder)``: the relative paths of the files the writer wrote there (from its manifest), or
#: None when the folder is not one of the writer's (no readable manifest).
ListedFiles = Callable[[str], "set[str] | None"]
#: ``is_complete(folder)``: whether a folder (a backup) holds a complete published folder.
IsComplete = Callable[[str], bool]


def resolve_out_dir(out_dir: str) -> str:
    """``out_dir`` absolute, symbolic links resolved: a link named as the output folder is kept and the folder it
    points to is (re)written (replacing the link itself would orphan its target).

    Raises:
        InputError: ``out_dir`` is a symbolic link whose target does not exist.
    """
    if os.path.islink(out_dir) and not os.path.exists(out_dir):
        raise InputError(f"{out_dir}: a symbolic link to {os.readlink(out_dir)}, which does not exist")
    return os.path.realpath(out_dir)


def check_out(out_dir: str, inputs: "list[str] | tuple[str, ...]" = ()) -> str:
    """The resolved output folder (:func:`resolve_out_dir`), if a folder may be published there.

    Args:
        inputs: files or folders the writer reads; the output may not be one of them, inside one or hold one.
    Raises:
        RefusedError: ``out_dir`` is a filesystem root (no parent to hold the temporary sibling), or equal to,
            inside or containing one of ``inputs`` (names both).
        InputError: a dangling symbolic link.
    """
    out = resolve_out_dir(out_dir)
    if os.path.dirname(out) == out:
        raise RefusedError(f"{out_dir}: is a filesystem root; the output must be a folder inside another "
                           "(choose another output folder)")
    for given in inputs:
        inp = os.path.realpath(given)
        if out == inp or out.startswith(inp.rstrip(os.sep) + os.sep) or inp.startswith(out + os.sep):
            where = "is" if out == inp else "is inside" if out.startswith(inp.rstrip(os.sep) + os.sep) else "contains"
            raise RefusedError(f"{out_dir}: {where} the input {given}, which this command reads; writing the "
                               "output there would replace or change it (choose an output folder outside it)")
    return out


def remove_leftover(path: str) -> None:
    """Remove a leftover backup or temporary folder; a symbolic link is unlinked, never its target."""
    if os.path.islink(path):
        os.unlink(path)
    else:
        shutil.rmtree(path, ignore_errors=True)


def backup_dir(out_dir: str) -> str:
    """Where a swap keeps the previous ``out_dir`` between its two renames (a hidden sibling)."""
    head, tail = os.path.split(os.path.abspath(out_dir).rstrip(os.sep))
    return os.path.join(head, f".{tail}.backup")


def lock_path(out_dir: str) -> str:
    """The writer lock of ``out_dir`` (a hidden sibling, present only while a writer holds it)."""
    head, tail = os.path.split(os.path.abspath(out_dir).rstrip(os.sep))
    return os.path.join(head, f".{tail}.lock")


def make_parent(out_dir: str) -> None:
    """Create the folders above ``out_dir`` that are missing.

    Raises:
        InputError: a path above ``out_dir`` is a file (names it), instead of a bare ``[Errno 17]`` / ``[Errno 20]``.
        RefusedError: ``out_dir`` is a filesystem root (:func:`check_out`).
    """
    parent = os.path.dirname(check_out(out_dir))
    probe = parent
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise InputError(f"{out_dir}: cannot be created: {probe} is a file, not a folder; choose another output "
                         "folder")
    os.makedirs(parent, exist_ok=True)


def recover(out_dir: str, is_complete: IsComplete, what: str = "folder") -> str | None:
    """Put back a complete folder at ``out_dir`` after a killed swap, then remove the leftovers of killed runs.

    Call it holding ``out_dir``'s writer lock. Returns a note saying what was restored, or None.
    """
    head, tail = os.path.split(os.path.abspath(out_dir).rstrip(os.sep))
    names = sorted(os.listdir(head)) if os.path.isdir(head) else []
    backup = backup_dir(out_dir)
    if os.path.islink(backup):  # not a backup a swap made (swaps rename folders): only the link goes, never its target
        os.unlink(backup)
    note = None
    if not os.path.lexists(out_dir) and os.path.isdir(backup) and is_complete(backup):
        os.replace(backup, out_dir)
        note = f"restored the previous {what} of {out_dir} from {backup} (a write into it had been interrupted)"
    if os.path.isdir(out_dir) and os.path.isdir(backup):
        remove_leftover(backup)
    prefix = f".{tail}.tmp-"
    for n in names:
        suffix = n[len(prefix):]
        if n.startswith(prefix) and not (suffix.isdigit() and fsutil.pid_alive(int(suffix))):
            remove_leftover(os.path.join(head, n))
    return note


def foreign_files(out_dir: str, listed_files: ListedFiles) -> list[str] | None:
    """Files under ``out_dir`` its writer's list does not name (sorted relative paths); None when ``out_dir`` is
    not one of the writer's folders at all (``listed_files`` returned None); ``[]`` for an absent or empty
    folder or one holding only listed files."""
    if not os.path.isdir(out_dir) or not os.listdir(out_dir):
        return []
    listed = listed_files(out_dir)
    if listed is None:
        return None
    listed = {os.path.normpath(p) for p in listed}
    found = (os.path.relpath(os.path.join(d, f), out_dir) for d, _, fs in os.walk(out_dir) for f in fs)
    return sorted(p for p in found if p not in listed)


class FolderPublisher:
    """Write a folder into a temporary sibling and swap it in (see the module docstring for the contract).

    Args:
        out_dir: the folder to (re)write; its parent must exist.
        listed_files: the writer's own file list of an existing folder (:data:`ListedFiles`).
        is_complete: whether a backup folder is complete (:data:`IsComplete`).
        what: what the folder is, for messages (``"shards folder"``, ``"Hugging Face export"``).
        crash_prefix: prefix of the commit points' names.
        inputs: files and folders the writer reads (:func:`check_out`).
    Raises:
        RefusedError, InputError: from :func:`check_out`, before the lock is taken.
    Attributes:
        out: the resolved output folder (:func:`resolve_out_dir`).
        note: what :func:`recover` restored on entry (None when nothing).
        tmp: the temporary folder (after :meth:`begin`).
    """

    def __init__(self, out_dir: str, *, listed_files: ListedFiles, is_complete: IsComplete, what: str,
                 crash_prefix: str, inputs: "list[str] | tuple[str, ...]" = ()) -> None:
        self.out = check_out(out_dir, inputs)
        self.listed_files, self.is_complete, self.what = listed_files, is_complete, what
        self.crash_prefix = crash_prefix
        self.note: str | None = None
        self.tmp: str | None = None
        self._lock = None
        self._committed = False

    def __enter__(self) -> "FolderPublisher":
        self._lock = locks.writer_lock(lock_path(self.out), f"{self.what} {self.out}")
        self._lock.__enter__()
        try:
            # first: even a write that fails later has restored what a killed swap left
            self.note = recover(self.out, self.is_complete, self.what)
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self.tmp is not None and not self._committed:
                shutil.rmtree(self.tmp, ignore_errors=True)
        finally:
            self._lock.__exit__(*exc)

    def check_foreign(self, hint: str = "move them away or choose another output folder",
                      not_ours: str | None = None) -> None:
        """Refuse to replace an ``out_dir`` that holds files its writer did not write.

        Args:
            hint: what to do instead, ending the message.
            not_ours: how to say that a folder is not the writer's (default ``is not a <what>``).
        Raises:
            RefusedError: ``out_dir`` is a file; a non-empty folder that is not one of the writer's (names
                ``what``); or one holding files the writer's list does not name (lists up to three).
        """
        if os.path.exists(self.out) and not os.path.isdir(self.out):
            raise RefusedError(f"{self.out}: exists and is not a folder; choose another output folder")
        foreign = foreign_files(self.out, self.listed_files)
        if foreign is None:
            raise RefusedError(f"{self.out}: folder exists, is not empty and {not_ours or 'is not a ' + self.what}; "
                               f"refusing to replace it: {hint}")
        if foreign:
            shown = ", ".join(foreign[:3]) + (", …" if len(foreign) > 3 else "")
            raise RefusedError(f"{self.out}: holds files the {self.what} did not write ({shown}); writing it "
                               f"replaces the whole folder, so {hint}")

    def begin(self) -> str:
        """Create and return the empty temporary folder ``.OUT.tmp-<pid>`` (beside ``out_dir``)."""
        self.tmp = fsutil.tmp_name(self.out)
        shutil.rmtree(self.tmp, ignore_errors=True)
        os.makedirs(self.tmp)
        return self.tmp

    def commit(self) -> None:
        """Swap the finished temporary folder in for ``out_dir``: a crash at any point leaves a complete folder
        in ``out_dir`` or in its backup (restored by the next :func:`recover`)."""
        p = self.crash_prefix
        fsutil.crash_point(f"{p}.before_swap")
        if os.path.exists(self.out):
            backup = backup_dir(self.out)
            remove_leftover(backup)  # recover() kept none while out_dir existed
            os.replace(self.out, backup)
            fsutil.crash_point(f"{p}.after_backup")
            os.replace(self.tmp, self.out)
            self._committed = True
            fsutil.crash_point(f"{p}.after_swap")
            shutil.rmtree(backup)
        else:
            os.replace(self.tmp, self.out)
            self._committed = True
