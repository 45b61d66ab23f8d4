"""Turn files, folders and JSONL streams into `SourceDocument`s, rejecting bad input by name.

Readers never raise on bad input: each problem becomes a `Rejection` naming the file (and line), so
one bad file cannot stop a large ingest run.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from indexes.documents import Rejection, SourceDocument, non_finite_number

TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".html", ".htm"}
SUPPORTED_SUFFIXES = TEXT_SUFFIXES | {".jsonl", ".pdf"}
_BINARY_PROBE_BYTES = 8192

ReadResult = SourceDocument | Rejection


def read_paths(paths: Iterable[str], max_bytes: int, stdin: IO[str] | None = None) -> Iterator[ReadResult]:
    """Read every path in order; `-` reads JSONL from standard input."""
    for raw in paths:
        if raw == "-":
            yield from read_jsonl_lines(stdin or sys.stdin, "<stdin>", max_bytes)
            continue
        path = Path(raw)
        if path.is_dir():
            yield from _read_folder(path, max_bytes)
        elif path.is_file():
            yield from read_file(path, path.name, max_bytes)
        else:
            yield Rejection(str(path), "no such file or folder")


def _read_folder(folder: Path, max_bytes: int) -> Iterator[ReadResult]:
    root = folder.resolve().parent
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue  # hidden files and folders (.git, .DS_Store) are never documents
        yield from read_file(path, path.resolve().relative_to(root).as_posix(), max_bytes)


def read_file(path: Path, doc_id: str, max_bytes: int) -> Iterator[ReadResult]:
    """Read one file; `doc_id` is the stable id its document gets (JSONL lines carry their own)."""
    suffix = path.suffix.lower()
    source = str(path)
    if suffix not in SUPPORTED_SUFFIXES:
        yield Rejection(source, f"unsupported file type {suffix or '(no extension)'!r}; "
                        f"supported: {', '.join(sorted(SUPPORTED_SUFFIXES))}")
        return
    if suffix == ".jsonl":
        try:
            with path.open("r", encoding="utf-8", errors="strict", newline="") as handle:
                yield from read_jsonl_lines(handle, source, max_bytes)
        except UnicodeDecodeError as exc:
            yield Rejection(source, f"invalid UTF-8 ({exc.reason}); the lines before it were read")
        return
    size = path.stat().st_size
    if size == 0:
        yield Rejection(source, "empty file")
        return
    if size > max_bytes:
        yield Rejection(source, f"file is {size / 1e6:.1f} MB, over the {max_bytes / 1e6:.1f} MB document limit")
        return
    data = path.read_bytes()
    if suffix == ".pdf":
        yield from _read_pdf(data, path, doc_id)
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


def read_jsonl_lines(handle: IO[str], source: str, max_bytes: int) -> Iterator[ReadResult]:
    """BEIR-style JSONL: `_id` (or `id`), `text`, optional `title` and `metadata` object."""
    seen_any = False
    for number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        seen_any = True
        if len(line) > max_bytes:
            yield Rejection(source, f"document is over the {max_bytes / 1e6:.1f} MB limit", number)
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            yield Rejection(source, f"malformed JSON ({exc.msg} at column {exc.colno})", number)
            continue
        result = document_from_record(record, source)
        if isinstance(result, str):
            yield Rejection(source, result, number)
        else:
            yield result
    if not seen_any:
        yield Rejection(source, "empty file")


def document_from_record(record: Any, source: str) -> SourceDocument | str:
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
    return SourceDocument(doc_id, text, title, metadata, source)


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


def _read_pdf(data: bytes, path: Path, doc_id: str) -> Iterator[ReadResult]:
    import io

    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    source = str(path)
    try:
        reader = PdfReader(io.BytesIO(data))
        pages = [page.extract_text() or "" for page in reader.pages]
        title = (reader.metadata.title if reader.metadata else None) or path.stem
    except (PyPdfError, ValueError, KeyError, TypeError) as exc:
        yield Rejection(source, f"unreadable PDF ({exc})")
        return
    text = "\n\n".join(page.strip() for page in pages)
    if not text.strip():
        yield Rejection(source, "PDF has no extractable text (scanned images need OCR first)")
        return
    yield SourceDocument(doc_id, text, str(title), {"source": doc_id, "type": "pdf", "pages": len(pages)}, source)
