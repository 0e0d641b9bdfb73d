"""Where ingest's inputs are: local paths, or fsspec URIs (``s3://``, ``gs://``, ``hf://``, ``file://``, ...).

Every input is opened by :func:`open_binary` (through :func:`xgen_data.sources.readers.open_input`, which
hashes it and reads the records from the same open file), so what is read is one stream whatever the
storage. The corpus itself stays on a filesystem every worker sees (docs/scale.md); only inputs are read
from URIs.

Object stores are configured the standard way of their client library, not by xgen: for ``s3://`` (s3fs over
botocore) the ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_REGION`` variables or
``~/.aws/config``, and ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``) for an S3-protocol server other than
AWS (MinIO, Ceph, moto). ``s3://`` needs the extra ``xgen[remote]`` (s3fs); ``gs://`` needs gcsfs and
``hf://`` huggingface_hub (fsspec names the package when it is missing).
"""
from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass
from typing import IO

import fsspec

from xgen_data.errors import InputError

#: What to install to read a URI scheme: ``xgen[remote]`` carries s3fs only.
INSTALL_HINTS = {"s3": "s3:// needs pip install 'xgen[remote]' (s3fs)", "s3a": "s3:// needs pip install 'xgen[remote]' "
                 "(s3fs)", "gs": "gs:// needs pip install gcsfs", "gcs": "gcs:// needs pip install gcsfs",
                 "hf": "hf:// needs pip install huggingface_hub"}

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(path: str) -> bool:
    """Whether ``path`` is a URI (``scheme://...``) rather than a local path."""
    return bool(_URI.match(path))


@dataclass(frozen=True)
class InputIdentity:
    """Which input a path names: ``location`` is the absolute local path or the URI as given; ``size`` in
    bytes and ``version`` (an object's ETag or version id, a file's modification time in ns) as the storage
    reports them; a change of either means other bytes."""

    location: str
    size: int
    version: str


def _filesystem(uri: str):
    """``(fsspec filesystem, path inside it)`` for a URI.

    Raises:
        InputError: no fsspec implementation of the URI's scheme is installed (names the package to install).
    """
    try:
        return fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as exc:
        scheme = uri.split("://", 1)[0].lower()
        hint = INSTALL_HINTS.get(scheme, "s3:// needs pip install 'xgen[remote]', gs:// pip install gcsfs, hf:// "
                                         "pip install huggingface_hub")
        raise InputError(f"{uri}: cannot read this kind of URI: {exc} ({hint})") from exc


def input_identity(path: str) -> InputIdentity:
    """The :class:`InputIdentity` of the file at ``path`` (a local path or a URI), asked of the storage now
    (not from a cached listing).

    Raises:
        FileNotFoundError: no file there (a folder or prefix is not a file). InputError: an unknown URI scheme.
    """
    if not is_uri(path):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such input file")
        st = os.stat(path)
        return InputIdentity(os.path.abspath(path), st.st_size, str(st.st_mtime_ns))
    fs, inner = _filesystem(path)
    fs.invalidate_cache(inner)
    try:
        info = fs.info(inner)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such input file") from None
    if info.get("type") != "file":
        raise FileNotFoundError(f"{path}: no such input file (it is a folder or prefix)")
    version = next((str(info[k]) for k in ("VersionId", "ETag", "etag", "md5Hash", "generation", "mtime",
                                            "LastModified", "last_modified") if info.get(k)), "")
    return InputIdentity(path, int(info.get("size") or 0), version)


def is_file(path: str) -> bool:
    """Whether ``path`` (local or URI) is a file."""
    try:
        input_identity(path)
    except FileNotFoundError:
        return False
    return True


def is_dir(path: str) -> bool:
    """Whether ``path`` (local or URI) is a folder (for an object store: a prefix holding objects)."""
    if not is_uri(path):
        return os.path.isdir(path)
    fs, inner = _filesystem(path)
    return fs.isdir(inner)


def open_binary(path: str) -> IO[bytes]:
    """The input at ``path`` (local path or URI) opened for reading, seekable (Parquet readers seek); the
    caller closes it.

    Raises:
        FileNotFoundError: no file there. InputError: an unknown URI scheme or a missing fsspec package.
    """
    if not is_uri(path):
        return open(path, "rb")
    fs, inner = _filesystem(path)
    try:
        return fs.open(inner, "rb")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such input file") from None


def find_files(folder: str) -> list[str]:
    """Every file under the folder or prefix URI ``folder``, recursively, as URIs of its scheme, sorted.
    Hidden entries (a path component starting with ``.``) are left out."""
    fs, inner = _filesystem(folder)
    base = inner.rstrip("/")
    out = []
    for found in fs.find(inner):
        rel = posixpath.relpath(found, base)
        if not any(part.startswith(".") for part in rel.split("/")):
            out.append(join(folder, rel))
    return sorted(out)


def join(folder: str, rel: str) -> str:
    """``folder`` (local path or URI) joined with a ``/``-separated relative path."""
    return folder.rstrip("/") + "/" + rel if is_uri(folder) else os.path.join(folder, rel)


def relative(path: str, folder: str) -> str:
    """``path`` relative to ``folder`` (both local paths, or both URIs of one scheme)."""
    if is_uri(path):
        return posixpath.relpath(path.split("://", 1)[1], folder.split("://", 1)[1].rstrip("/"))
    return os.path.relpath(path, folder)


def location(path: str) -> str:
    """How the registry records an input or folder: its absolute local path, or the URI as given."""
    return path if is_uri(path) else os.path.abspath(path)


def parent_name(path: str) -> str:
    """The name of the folder holding ``path`` (local path or URI), e.g. ``python`` for ``.../python/x.parquet``."""
    if is_uri(path):
        return posixpath.basename(posixpath.dirname(path.split("://", 1)[1]))
    return os.path.basename(os.path.dirname(os.path.abspath(path)))
