"""An output folder of ``xgen export shards`` / ``xgen card``: new or empty, written whole or not at all.

Written through the shared folder publisher (:class:`xgen_data.store.publish.FolderPublisher`): into a
temporary sibling ``.<name>.tmp-<pid>``, renamed into place, one writer at a time, leftovers of killed runs
removed by the next run into the same place. Unlike a rebuild of shards, these commands never replace an
existing folder: one holding anything, or a file, is refused before anything is written (RefusedError).
Commit point (:func:`xgen_data.store.fsutil.crash_point`): ``<crash_prefix>.before_swap``.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

from xgen_data.store.publish import FolderPublisher, make_parent


@contextlib.contextmanager
def new_folder(out_dir: str, what: str, crash_prefix: str, inputs: "list[str] | tuple[str, ...]" = ()
               ) -> Iterator[str]:
    """Yield a temporary folder to fill; on success it becomes ``out_dir``, on error it is removed.

    Args:
        what: what the folder is, for messages (``"shards export"``, ``"data card"``).
        crash_prefix: prefix of the commit points' names.
        inputs: the folders the command reads (the shards folder, the corpus): ``out_dir`` may not be one of
            them, inside one or contain one.
    Raises:
        RefusedError: ``out_dir`` is a file or a non-empty folder, a filesystem root, equal to, inside or
            containing one of ``inputs``, or another process is writing it.
        InputError: a path above ``out_dir`` is a file.
    """
    make_parent(out_dir)
    # listed_files None: no existing non-empty folder counts as ours, so none is ever replaced
    with FolderPublisher(out_dir, listed_files=lambda folder: None, is_complete=lambda folder: False, what=what,
                         crash_prefix=crash_prefix, inputs=inputs) as pub:
        pub.check_foreign(hint="choose a new or empty --out (nothing was written)",
                          not_ours=f"is not replaced by a {what}")
        tmp = pub.begin()
        yield tmp
        pub.commit()
