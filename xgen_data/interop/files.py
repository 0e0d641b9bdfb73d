"""Files of an export: written once, hashed as written (the sha256 recorded is of the bytes written)."""
from __future__ import annotations

import hashlib
import os


class HashingWriter:
    """A binary file opened for writing that keeps the SHA-256 and size of everything written to it.

    ``root``-relative ``rel`` names the file in the export's manifest (``files[rel] = sha256``).
    """

    def __init__(self, root: str, rel: str) -> None:
        self.rel = rel
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self._f = open(path, "xb")  # an export folder is new: a name written twice is a bug, not an overwrite
        self._h = hashlib.sha256()
        self._digest: str | None = None
        self.size = 0

    def write(self, data) -> None:
        view = memoryview(data).cast("B")
        self._h.update(view)
        self._f.write(view)
        self.size += view.nbytes

    def close(self) -> str:
        """Flush, fsync and close (once; later calls only answer); return the hex SHA-256 of the bytes written."""
        if self._digest is None:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            self._digest = self._h.hexdigest()
        return self._digest

    # the file-object methods pyarrow's PythonFile uses
    closed = property(lambda self: self._f.closed)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self._f.flush()

    def writable(self) -> bool:
        return True

    def __enter__(self) -> "HashingWriter":
        return self

    def __exit__(self, *exc) -> None:
        if not self._f.closed:
            self._f.close()


def write_bytes(root: str, rel: str, data: bytes) -> tuple[str, str]:
    """Write ``data`` to ``root/rel``; return ``(rel, sha256)``."""
    with HashingWriter(root, rel) as w:
        w.write(data)
        return rel, w.close()
