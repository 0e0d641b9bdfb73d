"""Streaming readers for raw corpora: JSONL, JSONL.gz, JSONL.zst and Parquet.

Every record comes with its location (file and 1-based line or row number) so that errors can name it.
Records follow the shared corpus schema ``{id, text, source, license, language, path, meta}``; only
``text`` is required.
"""
from __future__ import annotations

import json
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import zstandard

#: The document fields kept by the corpus (SPEC-independent; the shared corpus schema).
FIELDS = ("id", "text", "source", "license", "language", "path", "meta")
SUPPORTED_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".parquet")


class RecordError(ValueError):
    """A raw record is unusable. ``str()`` names the file, the line (or Parquet row) and the problem."""

    def __init__(self, file: str, line: int, problem: str):
        self.file, self.line, self.problem = file, line, problem
        super().__init__(f"{file}:{line}: {problem}")


@dataclass(frozen=True)
class RawRecord:
    """One undecoded input record: JSONL line bytes, or an already-decoded Parquet row (a dict)."""

    file: str
    line: int
    payload: bytes | dict[str, Any]
    id_prefix: str | None = None  # default id is "<id_prefix>:<line>" (file name otherwise)


def input_format(path: str) -> str:
    """Return ``'jsonl'``, ``'jsonl.gz'``, ``'jsonl.zst'`` or ``'parquet'`` from the file name.

    Raises:
        ValueError: the suffix is none of :data:`SUPPORTED_SUFFIXES`.
    """
    name = os.path.basename(path).lower()
    for suffix in (".jsonl.gz", ".jsonl.zst", ".jsonl", ".parquet"):
        if name.endswith(suffix):
            return suffix[1:]
    raise ValueError(f"{path}: unsupported input (expected one of {', '.join(SUPPORTED_SUFFIXES)})")


def iter_raw(path: str, id_prefix: str | None = None) -> Iterator[RawRecord]:
    """Stream the records of one input file without decoding JSON (that happens in worker processes).

    Memory is bounded by one line (JSONL) or one Parquet batch, whatever the file size. A UTF-8 byte
    order mark at the start of a JSONL file is skipped.

    Args:
        id_prefix: prefix of the default id of records without one (``"<id_prefix>:<line>"``).
    Raises:
        ValueError: unsupported suffix; RecordError: a corrupt or truncated compressed stream (names the
            file and the last good line; every complete line before it was yielded) or Parquet file.
    """
    fmt = input_format(path)
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        row = 0
        try:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
                for rec in batch.to_pylist():
                    row += 1
                    yield RawRecord(path, row, rec, id_prefix)
        except (OSError, pa.ArrowException) as exc:
            raise RecordError(path, row + 1, f"corrupt Parquet file: {exc}") from None
        return
    with open(path, "rb") as raw:
        if fmt == "jsonl.gz":
            chunks: Iterator[bytes] = _gzip_chunks(raw)
        elif fmt == "jsonl.zst":
            chunks = _zstd_chunks(raw)
        else:
            chunks = _read_chunks(raw)
        line_no = 0
        try:
            for line in _lines(chunks):
                line_no += 1
                if line_no == 1 and line.startswith(b"\xef\xbb\xbf"):
                    line = line[3:]
                if line.strip():
                    yield RawRecord(path, line_no, line, id_prefix)
        except (OSError, EOFError, zstandard.ZstdError, zlib.error) as exc:
            last = f"the last good line is {line_no}" if line_no else "no complete line could be read"
            raise RecordError(path, line_no + 1, f"corrupt or truncated {fmt} stream; {last}: {exc}") from exc


_CHUNK = 1 << 20


def _read_chunks(f) -> Iterator[bytes]:
    while block := f.read(_CHUNK):
        yield block


def _gzip_chunks(raw) -> Iterator[bytes]:
    """Decompress a (multi-member) gzip stream, yielding all data decoded before any damage.

    Unlike :class:`gzip.GzipFile`, which drops the chunk it was decoding when the stream ends early, every
    complete line before a truncation reaches the reader. A truncated last member raises ``EOFError``.
    """
    obj = zlib.decompressobj(wbits=31)
    pending = raw.read(_CHUNK)
    if not pending:
        return
    while True:
        data = pending or raw.read(_CHUNK)
        pending = b""
        if not data:
            break
        out = obj.decompress(data)
        if out:
            yield out
        if obj.eof:  # member finished: the rest (if any) starts the next member
            pending = obj.unused_data
            obj = zlib.decompressobj(wbits=31)
            if not pending:
                nxt = raw.read(_CHUNK)
                if not nxt:
                    return
                pending = nxt
    raise EOFError("stream ends in the middle of a gzip member (truncated file?)")


def _zstd_chunks(raw) -> Iterator[bytes]:
    """Decompress a (multi-frame) zstd stream; a truncated last frame raises ``EOFError``."""
    obj = zstandard.ZstdDecompressor().decompressobj()
    pending = raw.read(_CHUNK)
    if not pending:
        return  # an empty file holds no frame, hence no records
    while True:
        data = pending or raw.read(_CHUNK)
        pending = b""
        if not data:
            break
        out = obj.decompress(data)
        if out:
            yield out
        if obj.eof:  # frame finished: the rest (if any) starts the next frame
            pending = obj.unused_data
            obj = zstandard.ZstdDecompressor().decompressobj()
            if not pending:
                nxt = raw.read(_CHUNK)
                if not nxt:
                    return
                pending = nxt
    raise EOFError("stream ends in the middle of a zstd frame (truncated file?)")


def _lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Split a byte stream into lines (newline kept); the last line may lack its newline.

    A line longer than a chunk is gathered in a list, so very long lines cost linear time.
    """
    parts: list[bytes] = []
    for chunk in chunks:
        start = 0
        while (end := chunk.find(b"\n", start)) != -1:
            parts.append(chunk[start:end + 1])
            yield b"".join(parts)
            parts = []
            start = end + 1
        if start < len(chunk):
            parts.append(chunk[start:])
    if parts:
        yield b"".join(parts)


def decode_record(rec: RawRecord) -> dict[str, Any]:
    """Decode and validate one raw record into a document dict with the keys of :data:`FIELDS`.

    ``text`` must be a string that is valid UTF-8 (no lone surrogates); ``id`` defaults to
    ``"<file name>:<line>"``; ``meta`` is kept as a JSON string; other fields must be strings or null.

    Raises:
        RecordError: malformed JSON, invalid UTF-8, a record that is not an object, missing or non-string
            ``text``, or a field of the wrong type.
    """
    if isinstance(rec.payload, bytes):
        try:
            line = rec.payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RecordError(rec.file, rec.line, f"invalid UTF-8 at byte {exc.start}") from None
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RecordError(rec.file, rec.line, f"malformed JSON: {exc.msg} at column {exc.colno}") from None
        except RecursionError:
            raise RecordError(rec.file, rec.line, "malformed JSON: nested too deeply") from None
    else:
        obj = rec.payload
    if not isinstance(obj, dict):
        raise RecordError(rec.file, rec.line, f"record is a JSON {type(obj).__name__}, expected an object")
    if "text" not in obj:
        raise RecordError(rec.file, rec.line, "missing 'text'")
    text = obj["text"]
    if text is None:
        raise RecordError(rec.file, rec.line, "'text' is null, expected a string")
    if not isinstance(text, str):
        raise RecordError(rec.file, rec.line, f"'text' is {type(text).__name__}, expected a string")
    doc: dict[str, Any] = {"text": text}
    for key in ("id", "source", "license", "language", "path"):
        value = obj.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int))):
            raise RecordError(rec.file, rec.line, f"'{key}' is {type(value).__name__}, expected a string")
        doc[key] = None if value is None else str(value)
    if doc["id"] is None:
        doc["id"] = f"{rec.id_prefix or os.path.basename(rec.file)}:{rec.line}"
    meta = obj.get("meta")
    try:
        doc["meta"] = None if meta is None else (
            meta if isinstance(meta, str) else json.dumps(meta, ensure_ascii=False, default=str))
    except (ValueError, RecursionError) as exc:
        raise RecordError(rec.file, rec.line, f"'meta' cannot be stored as JSON: {exc}") from None
    for key, value in doc.items():
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise RecordError(rec.file, rec.line,
                                  f"invalid UTF-8 in '{key}' (lone surrogate at character {exc.start})") from None
    return doc
