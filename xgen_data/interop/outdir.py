"""An output folder of ``xgen export shards`` / ``xgen card``: new or empty, written whole or not at all.

Written through the shared folder publisher (:class:`xgen_data.store.publish.FolderPublisher`): into a
temporary sibling ``.<name>.tmp-<pid>``, renamed into place, one writer at a time, leftovers of killed runs
removed by the next run into the same place. Unlike a rebuild of shards, these commands never replace an
existing folder: one holding anything, or a file, is refused before anything is written (RefusedError); only a
folder the same command wrote earlier (its own file list, ``listed_files``: ``export.export_files``,
``card.card_files``, names every file in it) is replaced, whole.
Commit point (:func:`xgen_data.store.fsutil.crash_point`): ``<crash_prefix>.before_swap``.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

from xgen_data.store.publish import FolderPublisher, ListedFiles, make_parent


def _none(folder: str) -> None:
    return None


@contextlib.contextmanager
def new_folder(out_dir: str, what: str, crash_prefix: str, inputs: "list[str] | tuple[str, ...]" = (),
               listed_files: ListedFiles = _none) -> Iterator[str]:
    """Yield a temporary folder to fill; on success it becomes ``out_dir``, on error it is removed.

    Args:
        what: what the folder is, for messages (``"shards export"``, ``"data card"``).
        crash_prefix: prefix of the commit points' names.
        inputs: the folders the command reads (the shards folder, the corpus): ``out_dir`` may not be one of
            them, inside one or contain one.
        listed_files: the command's own file list of an earlier output (:data:`xgen_data.store.publish.ListedFiles`);
            an existing folder holding only those files is replaced (default: none, so no non-empty folder is).
    Raises:
        RefusedError: ``out_dir`` is a file or a non-empty folder (not an earlier output), a filesystem root,
            equal to, inside or containing one of ``inputs``, or another process is writing it.
        InputError: a path above ``out_dir`` is a file.
    """
    make_parent(out_dir)
    # a complete earlier output is one whose own file list reads; the default lists none, so none is replaced
    with FolderPublisher(out_dir, listed_files=listed_files, what=what, crash_prefix=crash_prefix, inputs=inputs,
                         is_complete=lambda folder: listed_files(folder) is not None) as pub:
        replaces = listed_files is not _none  # the command replaces an earlier output of its own
        pub.check_foreign(hint="choose a new or empty --out (nothing was written)",
                          not_ours=f"is not an earlier {what}" if replaces else f"a {what} replaces no folder")
        tmp = pub.begin()
        yield tmp
        pub.commit()
