"""Input files of ``xgen eval`` (samples, predictions, references, counts, problems): what is read is what is
hashed.

:func:`read_input` reads a file's bytes once and hashes those same bytes; the readers parse from them
(:func:`text_lines`), so a file replaced or rewritten while a command runs can never be recorded under one
checksum and scored from another content. Each reader returns its records as an :class:`InputList` or
:class:`InputDict`, which name the file read in ``.input`` (``{"path", "sha256"}``), the entry an output
folder's manifest records (:func:`xgen_train.evaluate.outputs.write_folder`'s ``inputs``).
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterator

from xgen_data.errors import InputError

__all__ = ["InputDict", "InputList", "read_input", "text_lines"]


class InputList(list):
    """A list of the records parsed from one file; ``.input`` is ``{"path": str, "sha256": hex}`` of its bytes."""

    input: dict


class InputDict(dict):
    """A dict of the records parsed from one file; ``.input`` is ``{"path": str, "sha256": hex}`` of its bytes."""

    input: dict


def read_input(path: str) -> tuple[bytes, dict]:
    """The bytes of ``path``, read once, and ``{"path": path, "sha256": hex digest of those bytes}``.

    Raises:
        FileNotFoundError: nothing at ``path``.
        InputError: ``path`` is a FIFO, socket, device or folder (named with its kind): it cannot be recorded.
    """
    # O_NONBLOCK: opening a FIFO must not wait for a writer; the kind is checked on the file opened, not the path
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = next((k for test, k in _KINDS if test(mode)), "special file")
        raise InputError(f"{path}: is a {kind}, not a regular file; xgen eval reads and records regular files")
    with open(fd, "rb") as fh:
        data = fh.read()
    return data, {"path": str(path), "sha256": hashlib.sha256(data).hexdigest()}


_KINDS = ((stat.S_ISFIFO, "FIFO (named pipe)"), (stat.S_ISDIR, "folder"), (stat.S_ISSOCK, "socket"),
          (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"))


def text_lines(data: bytes, path: str, error: type[Exception] = InputError,
               keepends: bool = False) -> Iterator[tuple[int, str]]:
    """``(line number from 1, text)`` of each line of ``data`` (``\\n``, ``\\r\\n`` or ``\\r`` ends a line, as
    Python's text files read them; a leading UTF-8 byte order mark is dropped).

    Raises:
        error: a line that is not UTF-8, naming ``path:line`` and the byte.
    """
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    for lineno, raw in enumerate(data.splitlines(keepends=keepends), 1):
        try:
            yield lineno, raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise error(f"{path}:{lineno}: not UTF-8 text (byte {exc.start + 1} of the line)") from None


def json_lines(data: bytes, path: str, error: type[Exception] = InputError) -> Iterator[tuple[int, object]]:
    """``(line number from 1, decoded JSON value)`` of each non-blank line of ``data`` (JSONL).

    Raises:
        error: a line that is not UTF-8 or not valid JSON, naming ``path:line``.
    """
    for lineno, line in text_lines(data, path, error):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as exc:
            raise error(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
