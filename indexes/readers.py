"""Turn files, folders and JSONL streams into `SourceDocument`s, rejecting bad input by name.

Readers never raise on bad input: each problem becomes a `Rejection` naming the file (and line), so
one bad file cannot stop a large ingest run. Any unexpected failure while reading one file is caught
and reported the same way (a safety net, not a substitute for the checks below).
"""
from __future__ import annotations

import json
import logging
import os
import sys
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from indexes.documents import Rejection, Skipped, SourceDocument, format_size, non_finite_number

TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".html", ".htm"}
SUPPORTED_SUFFIXES = TEXT_SUFFIXES | {".jsonl", ".pdf"}
_BINARY_PROBE_BYTES = 8192

ReadResult = SourceDocument | Rejection

log = logging.getLogger(__name__)


def read_paths(paths: Iterable[str], max_bytes: int, stdin: IO | None = None) -> Iterator[ReadResult]:
    """Read every path in order; `-` reads JSONL from standard input (as bytes, decoded line by line).

    A document id seen twice in one run keeps its first occurrence; the later ones are rejected."""
    return reject_duplicates(_read_all(paths, max_bytes, stdin))


def _read_all(paths: Iterable[str], max_bytes: int, stdin: IO | None) -> Iterator[ReadResult]:
    for raw in paths:
        if raw == "-":
            handle = stdin or sys.stdin
            yield from _guarded(lambda: read_jsonl_lines(getattr(handle, "buffer", handle), "<stdin>", max_bytes),
                                "<stdin>")
            continue
        path = Path(raw)
        if path.is_dir():
            yield from _read_folder(path, max_bytes)
        elif path.is_file():
            yield from _guarded(lambda: read_file(path, path.name, max_bytes), str(path))
        else:
            yield Rejection(str(path), "no such file or folder")


def _guarded(read, source: str) -> Iterator[ReadResult]:
    """The per-file safety net: whatever one file does, the run goes on with the next."""
    try:
        yield from read()
    except Exception as exc:  # noqa: BLE001 - reported as this file's rejection, never a traceback
        yield Rejection(source, f"could not be read ({type(exc).__name__}: {exc})")


def reject_duplicates(results: Iterable[ReadResult]) -> Iterator[ReadResult]:
    """Pass results through, rejecting a document whose id was already read (the first is kept)."""
    first: dict[str, tuple[str, int | None]] = {}
    for item in results:
        if isinstance(item, SourceDocument):
            earlier = first.get(item.id)
            if earlier is not None:
                source, line = earlier
                where = (f"line {line}" if source == item.source and line is not None
                         else f"{source}:{line}" if line is not None else source)
                yield Rejection(item.source, f"duplicate _id {item.id!r} (first at {where}); the first is kept",
                                item.line)
                continue
            first[item.id] = (item.source, item.line)
        yield item


def _read_folder(folder: Path, max_bytes: int) -> Iterator[ReadResult]:
    """Walk a folder without following links out of it; hidden files and folders are never documents."""
    base = folder.resolve()
    found: list[tuple[Path, bool]] = []  # (path, is a link to a folder)
    for dirpath, dirnames, filenames in os.walk(folder):  # os.walk never descends into linked folders
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend((here / d, True) for d in dirnames if (here / d).is_symlink())
        found.extend((here / f, False) for f in filenames if not f.startswith("."))
    for path, linked_folder in sorted(found):
        source = str(path)
        doc_id = (Path(base.name) / path.relative_to(folder)).as_posix()
        if path.is_symlink():
            target = path.resolve()
            if not target.is_relative_to(base):
                yield Rejection(source, "symbolic link leading outside the folder; skipped (not followed)")
                continue
            if linked_folder:
                continue  # a link to a folder inside this one: its files are walked already
            if not target.exists():
                yield Rejection(source, "broken symbolic link")
                continue
        if not path.is_file():
            yield Skipped(source, "not a regular file")
            continue
        yield from _guarded(lambda: read_file(path, doc_id, max_bytes, explicit=False), source)


def read_file(path: Path, doc_id: str, max_bytes: int, explicit: bool = True) -> Iterator[ReadResult]:
    """Read one file; `doc_id` is the stable id its document gets (JSONL lines carry their own).

    A file of an unsupported type is an error when named `explicit`ly, and skipped when met in a folder."""
    suffix = path.suffix.lower()
    source = str(path)
    if suffix not in SUPPORTED_SUFFIXES:
        kind = Rejection if explicit else Skipped
        yield kind(source, f"unsupported file type {suffix or '(no extension)'!r}; "
                           f"supported: {', '.join(sorted(SUPPORTED_SUFFIXES))}")
        return
    if suffix == ".jsonl":
        with path.open("rb") as handle:
            yield from read_jsonl_lines(handle, source, max_bytes)
        return
    size = path.stat().st_size
    if size == 0:
        yield Rejection(source, "empty file")
        return
    if size > max_bytes:
        yield Rejection(source, f"file is {format_size(size)}, over the {format_size(max_bytes)} document limit")
        return
    data = path.read_bytes()
    if suffix == ".pdf":
        yield from _read_pdf(data, path, doc_id, max_bytes)
        return
    if b"\x00" in data[:_BINARY_PROBE_BYTES]:
        yield Rejection(source, "binary content (NUL bytes) in a text file")
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        yield Rejection(source, f"invalid UTF-8 at byte {exc.start} ({exc.reason})", line)
        return
    text = text.removeprefix("\ufeff")
    title = path.stem
    if suffix in {".html", ".htm"}:
        title, text = _html_to_text(text, default_title=title)
    elif suffix in {".md", ".markdown"}:
        title = _markdown_title(text) or title
    if not text.strip():
        yield Rejection(source, "no text content")
        return
    yield SourceDocument(doc_id, text, title, {"source": doc_id, "type": suffix.lstrip(".")}, source)


def _bounded_lines(handle: IO, limit: int) -> Iterator[tuple[bytes | str, bool]]:
    """(line, too_long) pairs; a line over `limit` is never held whole in memory."""
    while True:
        line = handle.readline(limit + 1)
        if not line:
            return
        newline = b"\n" if isinstance(line, bytes) else "\n"
        if len(line) > limit and not line.endswith(newline):
            while (rest := handle.readline(limit + 1)) and not rest.endswith(newline):
                pass
            yield line[:0], True
            continue
        yield line, False


def read_jsonl_lines(handle: IO, source: str, max_bytes: int) -> Iterator[ReadResult]:
    """BEIR-style JSONL: `_id` (or `id`), `text`, optional `title` and `metadata` object.

    `handle` may give bytes (decoded here line by line, so invalid UTF-8 costs one line, not the
    rest of the file) or text. Lines end at LF; a CR before it is whitespace to JSON."""
    seen_any = False
    for number, (raw, too_long) in enumerate(_bounded_lines(handle, max_bytes), start=1):
        if too_long:
            seen_any = True
            yield Rejection(source, f"document is over the {format_size(max_bytes)} document limit", number)
            continue
        if isinstance(raw, bytes):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                seen_any = True
                yield Rejection(source, f"invalid UTF-8 at byte {exc.start + 1} of the line ({exc.reason})", number)
                continue
        else:
            line = raw
        if number == 1:
            line = line.removeprefix("\ufeff")
        if not line.strip():
            continue
        seen_any = True
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            yield Rejection(source, f"malformed JSON: {exc.msg.removesuffix(' at')} at column {exc.colno}", number)
            continue
        except RecursionError:
            yield Rejection(source, "malformed JSON: nested too deeply", number)
            continue
        result = document_from_record(record, source, max_bytes, line=number)
        yield Rejection(source, result, number) if isinstance(result, str) else result
    if not seen_any:
        yield Rejection(source, "empty file")


def document_from_record(record: Any, source: str, max_bytes: int | None = None,
                         line: int | None = None) -> SourceDocument | str:
    """The one check of a document record, for JSONL lines and REST bodies alike: the document or why not."""
    if not isinstance(record, dict):
        return "each line must be a JSON object"
    doc_id = record.get("_id", record.get("id"))
    if isinstance(doc_id, int) and not isinstance(doc_id, bool):
        doc_id = str(doc_id)
    if not isinstance(doc_id, str) or not doc_id.strip():
        return "missing document id ('_id' or 'id', a non-empty string)"
    text, title = record.get("text"), record.get("title") or ""
    if not isinstance(text, str) or not text.strip():
        return f"document {doc_id!r} has no 'text' string"
    if not isinstance(title, str):
        return f"document {doc_id!r}: 'title' must be a string"
    metadata = record.get("metadata") or {}
    if not isinstance(metadata, dict):
        return f"document {doc_id!r}: 'metadata' must be an object"
    if problem := non_finite_number(metadata):
        return f"document {doc_id!r}: {problem}"
    for name, value in (("_id", doc_id), ("title", title), ("text", text), ("metadata", metadata)):
        if (problem := _invalid_unicode(value)) is not None:
            return f"document {doc_id!r}: {name!r} is not valid Unicode ({problem})"
    if max_bytes is not None and (size := len(text.encode("utf-8"))) > max_bytes:
        return f"document {doc_id!r} is {format_size(size)}, over the {format_size(max_bytes)} document limit"
    return SourceDocument(doc_id, text, title, metadata, source, line)


def _invalid_unicode(value: Any) -> str | None:
    """Lone surrogates (`\\ud800` escapes) parse as JSON but cannot be stored or searched as UTF-8."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"lone surrogate {exc.object[exc.start]!r}"
    except (TypeError, ValueError):
        return None  # not a Unicode problem; other checks own it
    return None


def _markdown_title(text: str) -> str:
    for line in text.splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return ""


def _html_to_text(html: str, default_title: str) -> tuple[str, str]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    for tag in soup(["script", "style", "noscript", "template"]):
        tag.decompose()
    title = soup.title.get_text(strip=True) if soup.title else ""
    if soup.title:
        soup.title.decompose()
    lines = (line.strip() for line in soup.get_text("\n").splitlines())
    return title or default_title, "\n".join(line for line in lines if line)


class _PdfWarnings(logging.Handler):
    """pypdf's warnings, collected per thread for the file being read instead of printed to stderr."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.local = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        getattr(self.local, "messages", []).append(record.getMessage())

    def start(self) -> list[str]:
        self.local.messages = []
        return self.local.messages


_pdf_warnings = _PdfWarnings()
_pypdf_log = logging.getLogger("pypdf")
_pypdf_log.addHandler(_pdf_warnings)
_pypdf_log.propagate = False


def _read_pdf(data: bytes, path: Path, doc_id: str, max_bytes: int) -> Iterator[ReadResult]:
    import io

    from pypdf import PdfReader
    from pypdf.errors import DependencyError, FileNotDecryptedError

    source = str(path)
    warnings = _pdf_warnings.start()
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            yield Rejection(source, "PDF is protected by a password; decrypt it first (e.g. qpdf --decrypt)")
            return
        pages = [page.extract_text() or "" for page in reader.pages]
        title = (reader.metadata.title if reader.metadata else None) or path.stem
    except FileNotDecryptedError:
        yield Rejection(source, "PDF is protected by a password; decrypt it first (e.g. qpdf --decrypt)")
        return
    except DependencyError as exc:
        yield Rejection(source, f"encrypted PDF that this installation cannot open ({exc})")
        return
    except Exception as exc:  # noqa: BLE001 - a malformed PDF can fail anywhere inside pypdf
        hint = f"; pypdf: {warnings[0]}" if warnings else ""
        yield Rejection(source, f"unreadable PDF ({type(exc).__name__}: {exc}{hint})")
        return
    for message in warnings:
        log.info("%s: pypdf: %s", source, message)
    # extracted text can hold lone surrogates from broken font maps: replaced, never stored
    text = "\n\n".join(page.strip() for page in pages).encode("utf-8", "replace").decode("utf-8")
    title = str(title).encode("utf-8", "replace").decode("utf-8")
    if not text.strip():
        yield Rejection(source, "PDF has no extractable text (scanned images need OCR first)")
        return
    if (size := len(text.encode("utf-8"))) > max_bytes:
        yield Rejection(source, f"PDF text is {format_size(size)}, over the {format_size(max_bytes)} document limit")
        return
    yield SourceDocument(doc_id, text, title, {"source": doc_id, "type": "pdf", "pages": len(pages)}, source)
