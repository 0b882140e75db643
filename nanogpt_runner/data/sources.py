"""Where a corpus's text comes from, read as a stream of pieces that never holds the whole text in memory.

A ``Source`` yields ``(text, new_document)`` pieces in a fixed order, each at most about a megabyte (a plain
text file is cut at line breaks; a JSON-lines or parquet record is one document). ``identity`` is what the
cache key is made of: every file's path, size and modification time, or the URL, so two sources never share
a prepared cache and a changed file is prepared again.

    text files   .txt and .md (UTF-8; a file is one document)
    .jsonl       one JSON object per line, the document in field ``data.text_field``
    .parquet     the document in column ``data.text_field``, read a batch of rows at a time

Its ``origin`` says how the text was found, and run.json records it beside the corpus's name:

    embedded     a text shipped inside this package (tiny-shakespeare): no network, no checkout needed
    file         data.path (a file, a folder, or nanoGPT's prepared folder for data=bin)
    download     data.url
    builtin      made on this machine (pystdlib_char: this Python's standard library source)
"""

from __future__ import annotations

import hashlib
import json
import sys
import sysconfig
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from nanogpt_runner.data.prepared import DataError

PIECE_CHARS = 1 << 20
PYSTDLIB_MAX_BYTES = 4_000_000
TEXT_SUFFIXES = (".txt", ".md")
DOCUMENT_SUFFIXES = (*TEXT_SUFFIXES, ".jsonl", ".parquet")
# One .jsonl record at most this long: memory stays bounded whatever the file holds.
MAX_JSONL_LINE_BYTES = 64 << 20
PARQUET_BATCH_ROWS = 1024
# tiny-shakespeare (Karpathy's char-rnn input.txt; Shakespeare's text is in the public domain), shipped as
# package data so that the default run trains on it with no network and no source checkout.
EMBEDDED_CORPUS = "tinyshakespeare.txt"
ORIGINS = ("embedded", "file", "download", "builtin")

Piece = tuple[str, bool]


@dataclass(frozen=True)
class Source:
    name: str  # the data.name it was read for
    origin: str  # one of ORIGINS: how the text was found (recorded in meta.json and run.json)
    description: str  # where the text came from, for people: recorded in meta.json and run.json
    identity: str  # what the cache key is made of
    total_bytes: int  # size on disk, for the progress bar (JSON and parquet framing included)
    read: Callable[[], Iterator[Piece]]

    def pieces(self) -> Iterator[Piece]:
        """Every piece in order; the first piece of every document but the first says ``new_document``."""
        first = True
        for text, new_document in self.read():
            yield text, new_document and not first
            first = False


def file_source(name: str, path: Path, text_field: str) -> Source:
    """A file, or every .txt/.md/.jsonl/.parquet file under a folder (recursively, in path order)."""
    if not path.exists():
        raise DataError(f"data.path={path} does not exist: point it at a text, .jsonl or .parquet file, or a folder")
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.suffix in DOCUMENT_SUFFIXES and f.is_file())
        if not files:
            raise DataError(f"data.path={path} is a folder with no {', '.join(DOCUMENT_SUFFIXES)} files in it")
    else:
        files = [path]
    stats = [(f, f.stat()) for f in files]
    identity = ";".join(f"{f}:{s.st_size}:{s.st_mtime_ns}" for f, s in stats) + f"|field={text_field}"

    def read() -> Iterator[Piece]:
        for f in files:
            yield from _documents(f, text_field)

    return Source(name, "file", str(path), identity, sum(s.st_size for _, s in stats), read)


def embedded_path() -> Path:
    """The tiny-shakespeare text inside the installed package (a wheel's or the checkout's copy)."""
    return Path(str(resources.files("nanogpt_runner.data") / "corpora" / EMBEDDED_CORPUS))


def embedded_source(name: str) -> Source:
    """tiny-shakespeare from the package itself. Its cache key is its content's hash, not its path, so a
    reinstall elsewhere finds the corpus already prepared."""
    path = embedded_path()
    data = path.read_bytes()
    identity = f"embedded:{EMBEDDED_CORPUS}:{hashlib.sha256(data).hexdigest()[:16]}"
    return Source(name, "embedded", f"tiny-shakespeare shipped in the package ({path})", identity, len(data),
                  lambda: _text_pieces(path))


def download_source(name: str, url: str, timeout_s: float) -> Source:
    """The text at ``url``, read whole (a corpus to download is a few megabytes)."""
    text = download(url, timeout_s)
    return Source(name, "download", url, url, len(text.encode("utf-8")), lambda: _split(text))


def _split(text: str) -> Iterator[Piece]:
    for start in range(0, len(text), PIECE_CHARS):
        yield text[start:start + PIECE_CHARS], start == 0


def download(url: str, timeout_s: float) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return response.read().decode("utf-8")


def pystdlib_source() -> Source:
    """The offline corpus: this Python's standard library source, the first 4 MB of it, as one document."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])

    def read() -> Iterator[Piece]:
        parts, total = [], 0
        for f in sorted(stdlib.glob("*.py")):
            try:
                text = f.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            parts.append(text)
            total += len(text)
            if total >= PYSTDLIB_MAX_BYTES:
                break
        yield from _split("".join(parts))

    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    return Source("pystdlib_char", "builtin", f"python {sys.version.split()[0]} standard library ({stdlib})",
                  f"pystdlib-py{version}", PYSTDLIB_MAX_BYTES, read)


def _documents(path: Path, text_field: str) -> Iterator[Piece]:
    if path.suffix == ".jsonl":
        return ((text, True) for text in _jsonl_documents(path, text_field))
    if path.suffix == ".parquet":
        return ((text, True) for text in _parquet_documents(path, text_field))
    return _text_pieces(path)


def _text_pieces(path: Path) -> Iterator[Piece]:
    """A UTF-8 text file in pieces of about PIECE_CHARS that end at a line break (one document)."""
    with open(path, encoding="utf-8") as f:
        first = True
        try:
            while piece := f.read(PIECE_CHARS):
                yield piece + f.readline(PIECE_CHARS), first
                first = False
        except UnicodeDecodeError as err:
            raise DataError(f"{path} is not UTF-8 text ({err.reason} near byte {f.buffer.tell()}): "
                            f"convert it to UTF-8") from None


def _jsonl_documents(path: Path, text_field: str) -> Iterator[str]:
    """One document per line. A line is read with a bound (a file from elsewhere may hold one endless line)
    and parsed without recursing without limit (nor may it nest without end)."""
    with open(path, "rb") as f:
        for number, line in enumerate(iter(lambda: f.readline(MAX_JSONL_LINE_BYTES + 1), b""), 1):
            if len(line) > MAX_JSONL_LINE_BYTES:
                raise DataError(f"{path}:{number} is longer than {MAX_JSONL_LINE_BYTES >> 20} MB: split that "
                                f"document into several lines (records), or convert the file to .txt")
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except RecursionError:
                raise DataError(f"{path}:{number} nests JSON too deeply to be a record: every line of a .jsonl "
                                f"file must be a flat object holding the text") from None
            except ValueError as err:
                raise DataError(f"{path}:{number} is not a JSON object ({err}): every line of a .jsonl file "
                                f"must be one") from None
            text = record.get(text_field) if isinstance(record, dict) else None
            if not isinstance(text, str):
                raise DataError(f"{path}:{number} has no text field {text_field!r}: set data.text_field to the "
                                f"field that holds the document")
            yield text


def _parquet_documents(path: Path, text_field: str) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as err:
        raise DataError(f"{path} is not a readable parquet file ({err})") from None
    columns = table.schema_arrow.names
    if text_field not in columns:
        raise DataError(f"{path} has no column {text_field!r} (it has {', '.join(columns)}): set data.text_field "
                        f"to the column that holds the documents")
    if not pa.types.is_string(kind := table.schema_arrow.field(text_field).type) and not pa.types.is_large_string(kind):
        raise DataError(f"{path}: column {text_field!r} holds {kind}, not text: set data.text_field to a text column")
    for batch in table.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[text_field]):
        yield from (text for text in batch.column(0).to_pylist() if text is not None)
