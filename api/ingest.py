"""The REST side of ingest: JSON documents and uploaded files pass the same checks as the CLI's.

Documents in a JSON body go through `indexes.readers.document_from_record`, the one check every
JSONL line passes (ids and text that are not blank, valid Unicode, the collection's document size
limit), and the same duplicate-id rule. Uploaded files are saved under safe names in a private
temporary folder that is removed whatever happens, then read by the CLI's readers.
"""
from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from indexes.documents import Rejection, SourceDocument
from indexes.readers import document_from_record, read_paths, reject_duplicates

UPLOAD_PREFIX = "mighty-upload-"
_MAX_NAME_BYTES = 255


class UploadRejected(ValueError):
    """The request's files cannot be accepted as a whole (bad or repeated names): a 422."""


class Upload(Protocol):
    filename: str | None
    file: BinaryIO


def checked_documents(records: Sequence[dict[str, Any]], max_bytes: int) -> tuple[list[SourceDocument], list[dict]]:
    """Documents of a JSON body, and every rejection as {source: 'documents[i]', line, reason}."""
    def results() -> Iterator[SourceDocument | Rejection]:
        for index, record in enumerate(records):
            result = document_from_record(record, f"documents[{index}]", max_bytes)
            yield Rejection(f"documents[{index}]", result) if isinstance(result, str) else result

    documents: list[SourceDocument] = []
    rejected: list[dict] = []
    for item in reject_duplicates(results()):
        if isinstance(item, Rejection):
            rejected.append({"source": item.source, "line": item.line, "reason": item.reason})
        else:
            documents.append(item)
    return documents, rejected


def upload_name(raw: str | None) -> str:
    """The base name of a client's file name; path parts are dropped, names that are not names refused."""
    name = (raw or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    if name in ("", ".", "..") or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise UploadRejected(f"upload file name {raw!r} is not a usable file name")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise UploadRejected(f"upload file name {raw!r} is not valid Unicode") from None
    if size > _MAX_NAME_BYTES:
        raise UploadRejected(f"upload file name is {size} bytes long; the limit is {_MAX_NAME_BYTES}")
    return name


@contextmanager
def saved_uploads(uploads: Sequence[Upload]) -> Iterator[list[Path]]:
    """Write the uploads to a fresh private folder under their safe names; the folder never outlives this."""
    names = [upload_name(u.filename) for u in uploads]
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise UploadRejected(f"two uploaded files are named {name!r}; give each file its own name")
        seen.add(name)
    folder = Path(tempfile.mkdtemp(prefix=UPLOAD_PREFIX))
    try:
        paths = []
        for upload, name in zip(uploads, names):
            path = folder / name
            with open(path, "xb") as handle:  # exclusive: never replaces anything
                shutil.copyfileobj(upload.file, handle)
            paths.append(path)
        yield paths
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def read_uploads(uploads: Sequence[Upload], max_bytes: int) -> tuple[list[SourceDocument], list[dict]]:
    """Documents of the uploaded files, and every rejection as {source: file name, line, reason}."""
    with saved_uploads(uploads) as paths:
        parsed = list(read_paths([str(p) for p in paths], max_bytes))
    documents = [d for d in parsed if isinstance(d, SourceDocument)]
    # the private folder's path is no business of the client's: sources and reasons name files only
    rejected = [{"source": Path(r.source).name, "line": r.line, "reason": r.reason.replace(f"{paths[0].parent}/", "")}
                for r in parsed if isinstance(r, Rejection)]
    return documents, rejected
