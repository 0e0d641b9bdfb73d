"""Streaming readers for raw corpora: JSONL, JSONL.gz, JSONL.zst and Parquet.

Every record comes with its location (file and 1-based line or row number) so that errors can name it.
Records follow the shared corpus schema ``{id, text, source, license, language, path, meta}``; only
``text`` is required.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import zstandard

from xgen_data.attributes import languages
from xgen_data.errors import InputError
from xgen_data.sources import locations

#: The document fields kept by the corpus (SPEC-independent; the shared corpus schema).
FIELDS = ("id", "text", "source", "license", "language", "path", "meta")
SUPPORTED_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".parquet")


class RecordError(InputError):
    """A raw record is unusable. ``str()`` names the file, the line (or Parquet row) and the problem."""

    def __init__(self, file: str, line: int, problem: str):
        self.file, self.line, self.problem = file, line, problem
        super().__init__(f"{file}:{line}: {problem}")

    def __reduce__(self):  # rebuilt from its fields in the process that receives it (an executor's parent)
        return type(self), (self.file, self.line, self.problem)


class StreamError(RecordError):
    """The input file itself cannot be read past ``line`` (a truncated or corrupt ``.gz`` / ``.zst`` stream, a
    corrupt Parquet file): every record before ``line`` was read, none from there on can be. ``truncated``:
    the stream ended early (a cut file, whose records before the cut decode exactly) rather than holding
    damaged bytes (after which nothing decoded can be trusted)."""

    def __init__(self, file: str, line: int, problem: str, truncated: bool = False):
        super().__init__(file, line, problem)
        self.truncated = truncated

    def __reduce__(self):
        return type(self), (self.file, self.line, self.problem, self.truncated)


def past_broken_stream(exc: StreamError, on_error: str, kept: str) -> str:
    """What a run reading records (``xgen ingest``, ``xgen sft prepare``) does at a broken input stream:
    return the line to report when it may go on, keeping the records before the break; raise otherwise.

    A truncated stream (a cut file, or an empty ``.gz`` / ``.zst``: its records before the cut decode exactly)
    is passed with ``on_error="skip"`` (the rest of the file is skipped) and raised with ``"raise"``. A corrupt
    stream or Parquet file (damaged bytes, ``exc.truncated`` false) is raised in both modes: what was decoded
    before the damage was detected may be wrong.

    Args:
        kept: the past participle of what the run does with a file's records (``"ingested"``, ``"used"``),
            for the error message.
    Returns:
        ``"<file>:<line>: <problem>; the rest of the file is skipped"``.
    Raises:
        StreamError: naming the file and line, saying that nothing of the file was ``kept`` and why.
    """
    if not exc.truncated:
        raise StreamError(exc.file, exc.line, f"{exc.problem}; nothing of this file was {kept} (a corrupt stream "
                          "stops the run even with --on-error skip: records decoded before the damage may be "
                          "wrong)", False)
    if on_error != "skip":
        raise StreamError(exc.file, exc.line, f"{exc.problem}; nothing of this file was {kept} (with --on-error "
                          "skip the records before it are kept)", True)
    return f"{exc.file}:{exc.line}: {exc.problem}; the rest of the file is skipped"


@dataclass(frozen=True)
class Layout:
    """How an input's columns map to the corpus fields (:data:`FIELDS`).

    ``columns``: ``((field, column), ...)`` from ``--columns text=content,path=max_stars_repo_path``;
    ``starcoder``: BigCode's StarCoderData / The Stack layout (:data:`STARCODER_COLUMNS`; the repository
    context goes to ``meta``); ``language``: the language of every record (StarCoderData's folder name).
    Columns that map to no field are kept in ``meta`` (a JSON object) unless a column is mapped to ``meta``.
    """

    columns: tuple[tuple[str, str], ...] = ()
    starcoder: bool = False
    language: str | None = None
    metadata_tokens: bool = False  # prefix StarCoder's <reponame> <filename> <gh_stars> (metadata_prefix)


#: StarCoderData / The Stack column -> corpus field (the license list becomes a JSON array: all apply).
STARCODER_COLUMNS = (("text", "content"), ("path", "max_stars_repo_path"), ("license", "max_stars_repo_licenses"))
STARCODER_SOURCE = "starcoderdata"


def parse_columns(spec: str | None) -> tuple[tuple[str, str], ...]:
    """``"text=content,path=max_stars_repo_path"`` -> ``(("text", "content"), ("path", "max_stars_repo_path"))``.

    Raises:
        ValueError: an item is not ``field=column``, a field is not one of :data:`FIELDS`, or is repeated.
    """
    if not spec:
        return ()
    out = []
    for item in spec.split(","):
        if "=" not in item or not all(x.strip() for x in item.split("=", 1)):
            raise InputError(f"--columns: {item!r} is not field=column (e.g. text=content,path=max_stars_repo_path)")
        f, c = (x.strip() for x in item.split("=", 1))
        if f not in FIELDS:
            raise InputError(f"--columns: {f!r} is not a corpus field; fields: {', '.join(FIELDS)}")
        if f in dict(out):
            raise InputError(f"--columns: field {f!r} is mapped twice")
        out.append((f, c))
    return tuple(out)


def detect_layout(path: str, columns: tuple[tuple[str, str], ...] = (), metadata_tokens: bool = False,
                  fileobj: IO[bytes] | None = None) -> Layout | None:
    """The layout of one input: StarCoder's when a Parquet file has ``content`` and ``max_stars_*`` columns
    and no ``text`` (its language from the parent folder when that names a language of
    :mod:`xgen_data.attributes.languages`, e.g. ``python/train-00000-of-00059.parquet``); ``columns`` on top; None for
    the plain corpus schema. ``fileobj``: read the Parquet schema from this open file (left rewound)."""
    star = False
    if input_format(path) == "parquet":
        import pyarrow.parquet as pq

        try:
            if fileobj is not None:
                names = set(pq.read_schema(fileobj).names)
            else:
                with locations.open_binary(path) as f:
                    names = set(pq.read_schema(f).names)
        except Exception:  # noqa: BLE001  (a corrupt file is reported by iter_raw with its row)
            names = set()
        finally:
            if fileobj is not None:
                fileobj.seek(0)
        star = "content" in names and "text" not in names and any(n.startswith("max_stars_") for n in names)
    language = None
    if star:
        folder = locations.parent_name(path)
        language = folder if folder in languages.table() else None
    if not star and not columns and not metadata_tokens:
        return None
    return Layout(columns=tuple(columns), starcoder=star, language=language, metadata_tokens=metadata_tokens)


def stars_bucket(stars) -> str | None:
    """StarCoder's star buckets for ``<gh_stars>``: ``0``, ``1-10``, ``10-100``, ``100-1000``, ``1000+``."""
    try:
        n = int(stars)
    except (TypeError, ValueError):
        return None
    if n <= 0:
        return "0"
    return "1-10" if n < 10 else "10-100" if n < 100 else "100-1000" if n < 1000 else "1000+"


def metadata_prefix(obj: dict[str, Any], path: str | None) -> tuple[str | None, str | None, str | None]:
    """``(repository, file name, stars bucket)`` for StarCoder's metadata tokens, from the record's
    repository context (``max_stars_repo_name`` / ``repo`` / ``package``; ``max_stars_count`` / ``stars``,
    at the top level or in ``meta``) and its path; None for what the record does not say."""
    meta = obj.get("meta") if isinstance(obj.get("meta"), dict) else {}

    def pick(*keys):
        for k in keys:
            for src in (obj, meta):
                if src.get(k) not in (None, ""):
                    return src[k]
        return None
    repo = pick("max_stars_repo_name", "repo", "repository", "package")
    return (None if repo is None else str(repo), path, stars_bucket(pick("max_stars_count", "stars")))


def apply_layout(obj: dict[str, Any], layout: Layout, file: str, line: int) -> dict[str, Any]:
    """A record of the input's schema as a record of the corpus schema (see :class:`Layout`).

    Raises:
        RecordError: a mapped column is missing from the record.
    """
    mapping = dict(STARCODER_COLUMNS) if layout.starcoder else {}
    if layout.starcoder and "id" not in obj and "hexsha" in obj:
        mapping["id"] = "hexsha"
    mapping.update(dict(layout.columns))
    out: dict[str, Any] = {}
    for f, c in mapping.items():
        if c not in obj:
            if f == "text" or (f, c) in layout.columns:
                raise RecordError(file, line, f"missing column {c!r} (mapped to {f!r}); columns: "
                                  f"{', '.join(sorted(obj))[:200]}")
            continue
        v = obj[c]
        if f == "license" and isinstance(v, (list, tuple)):
            v = json.dumps([str(x) for x in v]) if v else None
        out[f] = v
    used = set(mapping.values())
    for f in FIELDS:  # same-named columns fill the other fields
        if f not in out and f in obj and f not in mapping:
            out[f] = obj[f]
            used.add(f)
    if layout.starcoder:
        out.setdefault("source", STARCODER_SOURCE)
        if layout.language is not None and out.get("language") is None:
            out["language"] = layout.language
        elif out.get("language") is None and isinstance(obj.get("lang"), str):
            out["language"] = obj["lang"]
            used.add("lang")
    if "meta" not in mapping:
        rest = {k: v for k, v in obj.items() if k not in used and k != "meta"}
        if isinstance(obj.get("meta"), dict):
            rest = {**obj["meta"], **rest}
        if rest:
            out["meta"] = rest
    return out


#: How ``xgen ingest --id-from`` makes the id of a record that has none: ``line``: ``<file stem>#<the file's
#: sha256[:12]>:<line>`` (the line, or Parquet row, in that file's bytes); ``sha256``: ``sha256:<hex SHA-256 of
#: the text's UTF-8>`` (the same text gets the same id, so a repeated text is a duplicate id).
ID_FROM = ("line", "sha256")


@dataclass(frozen=True)
class RawRecord:
    """One undecoded input record: JSONL line bytes, or an already-decoded Parquet row (a dict)."""

    file: str
    line: int
    payload: bytes | dict[str, Any]
    id_prefix: str | None = None  # the "line" id is "<id_prefix>:<line>" (file name otherwise)
    layout: Layout | None = None  # how its columns map to the corpus fields (None: the corpus schema)
    id_from: str | None = "line"  # how a record without an id gets one (ID_FROM); None: it is an error


_SPECIAL_KINDS = ((stat.S_ISFIFO, "FIFO (named pipe)"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
                  (stat.S_ISBLK, "block device"), (stat.S_ISDIR, "folder"))


def special_kind(path: str) -> str | None:
    """What ``path`` is when it is not a regular file (``"FIFO (named pipe)"``, ``"socket"``, a device, a
    folder; links followed), ``"broken link"`` for a link to nothing, None for a regular file.

    Raises:
        FileNotFoundError: nothing at ``path``.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            return "broken link"
        raise
    if stat.S_ISREG(mode):
        return None
    return next((kind for test, kind in _SPECIAL_KINDS if test(mode)), "special file")


def check_regular(path: str) -> None:
    """Refuse an input that is not a regular file: ingest hashes a file and then reads the same bytes, which a
    pipe, socket or device cannot give twice.

    Raises:
        InputError: nothing at ``path`` (``"<path>: no such input file"``), or ``path`` is a FIFO, socket,
            device or folder, named with its kind.
    A URI must name an object (a prefix is not one): FileNotFoundError otherwise.
    """
    if locations.is_uri(path):
        locations.input_identity(path)
        return
    try:
        kind = special_kind(path)
    except FileNotFoundError:
        raise InputError(f"{path}: no such input file") from None
    if kind is not None:
        raise InputError(f"{path}: is a {kind}, not a regular file; xgen ingest reads regular files (it hashes "
                         "a file's bytes and reads the same bytes again, which a pipe or device cannot give)")


def file_signature(st: os.stat_result) -> tuple[int, ...]:
    """The parts of a file's ``stat`` that change when its bytes change in place (size, modification time in
    ns) or when another file is read (device, inode). Not the status-change time: unlinking or renaming over a
    file that is open changes it, while the open file's bytes stay the ones hashed."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class HashingReader:
    """A binary file object's ``read`` that also feeds every byte it returns to a SHA-256 (what is read is
    what is hashed). ``drain()`` hashes the rest up to the end of the file; ``hexdigest()`` is then the
    SHA-256 of every byte the reader consumed."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f, self._h, self.n_bytes = f, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._h.update(data)
        self.n_bytes += len(data)
        return data

    def drain(self, chunk: int = 1 << 20) -> None:
        while self.read(chunk):
            pass

    def hexdigest(self) -> str:
        return self._h.hexdigest()


@dataclass
class OpenedInput:
    """An input file opened once for an ingest: ``sha256`` of its bytes hashed from the open file, the
    ``os.fstat`` signature (:func:`file_signature`) taken then, and the file object the records are read from
    (rewound). A file replaced by a rename meanwhile does not matter (the open file keeps the old bytes); one
    changed in place is found by :meth:`check_unchanged`."""

    path: str
    file: IO[bytes]
    sha256: str
    signature: tuple[int, ...]

    def close(self) -> None:
        self.file.close()

    def check_unchanged(self, read_sha256: str | None = None) -> None:
        """Raise when the file changed since it was hashed: its ``fstat`` signature differs, or
        ``read_sha256`` (the hash of the bytes the records were read from, when read sequentially) differs.

        Raises:
            InputError: names the file; nothing of it may be kept.
        """
        now = _signature(self.path, self.file)
        if now != self.signature or (read_sha256 is not None and read_sha256 != self.sha256):
            raise InputError(f"{self.path}: the file changed while it was being ingested (its size, time or bytes "
                             "differ from when it was hashed); nothing of it was ingested, run the ingest again "
                             "once the file is complete")


def _signature(path: str, f: IO[bytes]) -> tuple:
    """What changes when the input's bytes change: the open file's ``fstat`` (:func:`file_signature`) for a local
    file; the object's size and version (ETag, version id or modification time) asked of the store for a URI."""
    if locations.is_uri(path):
        identity = locations.input_identity(path)
        return (identity.size, identity.version)
    return file_signature(os.fstat(f.fileno()))


def open_input(path: str, chunk: int = 1 << 20) -> OpenedInput:
    """Open one input for ingest, a local file or an fsspec URI (:mod:`xgen_data.sources.locations`): refuse what
    is not a regular file (:func:`check_regular`), hash its bytes from the open file and rewind it. The caller
    closes ``.file``.

    Raises:
        FileNotFoundError, InputError: see :func:`check_regular`; InputError for a URI no installed fsspec
            implementation reads.
    """
    check_regular(path)
    f = locations.open_binary(path)
    try:
        before = _signature(path, f)
        h = hashlib.sha256()
        while block := f.read(chunk):
            h.update(block)
        f.seek(0)
    except BaseException:
        f.close()
        raise
    return OpenedInput(path, f, h.hexdigest(), before)


def input_format(path: str) -> str:
    """Return ``'jsonl'``, ``'jsonl.gz'``, ``'jsonl.zst'`` or ``'parquet'`` from the file name.

    Raises:
        ValueError: the suffix is none of :data:`SUPPORTED_SUFFIXES`.
    """
    name = os.path.basename(path).lower()
    for suffix in (".jsonl.gz", ".jsonl.zst", ".jsonl", ".parquet"):
        if name.endswith(suffix):
            return suffix[1:]
    raise InputError(f"{path}: unsupported input (expected one of {', '.join(SUPPORTED_SUFFIXES)})")


def iter_raw(path: str, id_prefix: str | None = None, layout: Layout | None = None,
             fileobj: IO[bytes] | None = None, id_from: str | None = "line") -> Iterator[RawRecord]:
    """Stream the records of one input file without decoding JSON (that happens in worker processes).

    Memory is bounded by one line (JSONL) or one Parquet batch, whatever the file size. A UTF-8 byte
    order mark at the start of a JSONL file is skipped. ``path`` is a local path or an fsspec URI
    (:func:`xgen_data.sources.locations.open_binary`).

    Args:
        id_prefix: prefix of the ``line`` id of records without one (``"<id_prefix>:<line>"``).
        id_from: how :func:`decode_record` makes the id of a record without one (:data:`ID_FROM`); None:
            such a record is a :class:`RecordError`.
        layout: the input's column mapping (:func:`detect_layout`), applied when records are decoded.
        fileobj: read the bytes from this open binary file object (positioned at the start; e.g. a
            :class:`HashingReader` over :func:`open_input`'s file) instead of opening ``path``, which then only
            names the records' file.
    Raises:
        ValueError: unsupported suffix.
        StreamError: a corrupt or truncated compressed stream (names the file, the line where the stream
            broke and the last good line; every complete line before it was yielded) or a corrupt Parquet
            file (names the row).
    """
    fmt = input_format(path)
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        row = 0
        with (contextlib.nullcontext(fileobj) if fileobj is not None else locations.open_binary(path)) as raw:
            try:
                for batch in pq.ParquetFile(raw).iter_batches(batch_size=1024):
                    for rec in batch.to_pylist():
                        row += 1
                        yield RawRecord(path, row, rec, id_prefix, layout, id_from)
            except (OSError, pa.ArrowException) as exc:
                raise StreamError(path, row + 1, f"corrupt Parquet file: {exc}") from None
        return
    with (contextlib.nullcontext(fileobj) if fileobj is not None else locations.open_binary(path)) as raw:
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
                    yield RawRecord(path, line_no, line, id_prefix, layout, id_from)
        except (OSError, EOFError, zstandard.ZstdError, zlib.error) as exc:
            last = f"the last good line is {line_no}" if line_no else "no complete line could be read"
            raise StreamError(path, line_no + 1, f"corrupt or truncated {fmt} stream; {last}: {exc}",
                              truncated=isinstance(exc, EOFError)) from exc


_CHUNK = 1 << 20


def _read_chunks(f) -> Iterator[bytes]:
    while block := f.read(_CHUNK):
        yield block


def _decoded_chunks(raw, new_decoder, unit: str) -> Iterator[bytes]:
    """Decompress a stream of concatenated members (gzip) or frames (zstd), yielding all data decoded before
    any damage.

    Unlike :class:`gzip.GzipFile`, which drops the chunk it was decoding when the stream ends early, every
    complete line before a truncation reaches the reader. ``new_decoder()`` returns an object with
    ``decompress``, ``eof`` and ``unused_data`` (zlib's and zstandard's decompress objects). A truncated last
    member raises ``EOFError`` naming ``unit``, and so does an empty file (no member at all: ``gzip -t`` and
    ``zstd -t`` reject it too; most often a download or copy that was cut before its first byte).
    """
    obj = new_decoder()
    pending = raw.read(_CHUNK)
    if not pending:
        raise EOFError(f"empty file: not even one {unit} (truncated file?)")
    while True:
        data = pending or raw.read(_CHUNK)
        pending = b""
        if not data:
            break
        out = obj.decompress(data)
        if out:
            yield out
        if obj.eof:  # this member finished: the rest (if any) starts the next one
            pending = obj.unused_data
            obj = new_decoder()
            if not pending:
                nxt = raw.read(_CHUNK)
                if not nxt:
                    return
                pending = nxt
    raise EOFError(f"stream ends in the middle of a {unit} (truncated file?)")


def _gzip_chunks(raw) -> Iterator[bytes]:
    """Decompress a (multi-member) gzip stream (:func:`_decoded_chunks`)."""
    return _decoded_chunks(raw, lambda: zlib.decompressobj(wbits=31), "gzip member")


def _zstd_chunks(raw) -> Iterator[bytes]:
    """Decompress a (multi-frame) zstd stream (:func:`_decoded_chunks`)."""
    return _decoded_chunks(raw, lambda: zstandard.ZstdDecompressor().decompressobj(), "zstd frame")


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


def _meta_json(meta) -> str | None:
    """``meta`` as the JSON text stored in the ``meta`` column: a string that already is JSON (Parquet sources
    store it so) is kept, any other string becomes a JSON string, other values are serialised; NaN and
    infinities are refused (not JSON: DuckDB's ``json_extract`` would fail on them).

    Raises:
        ValueError: NaN or infinity inside, or a value that cannot be serialised.
    """
    if meta is None:
        return None
    if isinstance(meta, str):
        try:
            parsed = json.loads(meta)
        except ValueError:
            return json.dumps(meta, ensure_ascii=False)
        json.dumps(parsed, allow_nan=False)  # raises on NaN / Infinity inside the text
        return meta
    return json.dumps(meta, ensure_ascii=False, default=str, allow_nan=False)


def json_error_text(exc: json.JSONDecodeError) -> str:
    """``"<json's message> at column N"`` (1-based characters) or ``"... at the end of the line"`` for an error
    in one JSONL line: the line is named beside it, so json's own ``line 2`` (past the line's newline) would
    only mislead. json's messages may end in "at" ("Unterminated string starting at"): one "at" is kept."""
    where = "the end of the line" if exc.pos >= len(exc.doc.rstrip("\r\n")) else f"column {exc.pos + 1}"
    return f"{exc.msg.removesuffix(' at')} at {where}"


def _made_id(rec: RawRecord, text: str) -> str:
    """The id of a record without one, as ``rec.id_from`` says (:data:`ID_FROM`).

    Raises:
        RecordError: ``rec.id_from`` is None (an id is required), naming the file and line.
    """
    if rec.id_from is None:
        raise RecordError(rec.file, rec.line, "missing 'id' (give every record an id, or make one with --id-from "
                                              f"{' or --id-from '.join(ID_FROM)})")
    if rec.id_from == "sha256":
        return "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{rec.id_prefix or os.path.basename(rec.file)}:{rec.line}"


def decode_record(rec: RawRecord) -> dict[str, Any]:
    """Decode and validate one raw record into a document dict with the keys of :data:`FIELDS`.

    ``text`` must be a string that is valid UTF-8 (no lone surrogates); a missing ``id`` is made as
    ``rec.id_from`` says (:data:`ID_FROM`; with None it is an error); ``meta`` is kept as a JSON string; other
    fields must be strings or null.

    Raises:
        RecordError: malformed JSON, invalid UTF-8, a record that is not an object, missing or non-string
            ``text``, a field of the wrong type, or a missing ``id`` with ``rec.id_from=None``.
    """
    if isinstance(rec.payload, bytes):
        try:
            line = rec.payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RecordError(rec.file, rec.line, f"invalid UTF-8 at byte {exc.start}") from None
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RecordError(rec.file, rec.line, f"malformed JSON: {json_error_text(exc)}") from None
        except RecursionError:
            raise RecordError(rec.file, rec.line, "malformed JSON: nested too deeply") from None
        except ValueError as exc:  # e.g. an integer literal past Python's 4,300-digit conversion limit
            raise RecordError(rec.file, rec.line, f"unreadable JSON value: {exc}") from None
    else:
        obj = rec.payload
    if not isinstance(obj, dict):
        raise RecordError(rec.file, rec.line, f"record is a JSON {type(obj).__name__}, expected an object")
    if rec.layout is not None and (rec.layout.starcoder or rec.layout.columns):
        obj = apply_layout(obj, rec.layout, rec.file, rec.line)
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
    if doc["id"] is not None and not doc["id"].strip():
        raise RecordError(rec.file, rec.line, f"'id' is {doc['id']!r}: an id must not be empty (omit the key and "
                                              "give --id-from to make one)")
    meta = obj.get("meta")
    try:
        doc["meta"] = _meta_json(meta)
    except (ValueError, RecursionError) as exc:
        raise RecordError(rec.file, rec.line, f"'meta' cannot be stored as JSON: {exc}") from None
    if rec.layout is not None and rec.layout.metadata_tokens:
        if isinstance(meta, str):
            try:
                parsed = json.loads(meta)
            except ValueError:
                parsed = None
            obj = {**obj, "meta": parsed if isinstance(parsed, dict) else None}
        doc["_prefix"] = metadata_prefix(obj, doc["path"])
    for key, value in doc.items():
        if key != "_prefix" and isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise RecordError(rec.file, rec.line,
                                  f"invalid UTF-8 in '{key}' (lone surrogate at character {exc.start})") from None
    if doc["id"] is None:  # last: a record's other problems are named first
        doc["id"] = _made_id(rec, text)
    return doc
