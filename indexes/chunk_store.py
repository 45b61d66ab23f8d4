"""Per-segment chunk and document tables in SQLite, written once and then opened read-only.

SQLite keeps chunk text and metadata off the heap (a million chunks stay on disk until a hit needs
them) and evaluates metadata filters with json_extract (compiled by `indexes.filters`), so filters
need no bespoke index.
"""
from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexes.documents import Chunk
from indexes.filters import Filter, compile_filter, extract_metadata

FILE_NAME = "chunks.sqlite"
_SCHEMA = """
CREATE TABLE chunks (row INTEGER PRIMARY KEY, doc_id TEXT NOT NULL, chunk_index INTEGER NOT NULL,
                     title TEXT NOT NULL, text TEXT NOT NULL, start INTEGER NOT NULL, end INTEGER NOT NULL,
                     metadata TEXT NOT NULL);
CREATE TABLE docs (doc_id TEXT PRIMARY KEY, hash TEXT NOT NULL, first_row INTEGER NOT NULL,
                   rows INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class DocumentEntry:
    doc_id: str
    hash: str
    first_row: int
    rows: int


def write_chunk_store(folder: Path, docs: Iterable[tuple[str, str, list[Chunk]]]) -> None:
    """docs: (doc_id, content hash, chunks) in row order."""
    connection = sqlite3.connect(folder / FILE_NAME)
    try:
        connection.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;" + _SCHEMA)
        row = 0
        for doc_id, content_hash, chunks in docs:
            connection.execute("INSERT INTO docs VALUES (?, ?, ?, ?)", (doc_id, content_hash, row, len(chunks)))
            connection.executemany(
                "INSERT INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(row + i, c.doc_id, c.chunk_index, c.title, c.text, c.start, c.end,
                  json.dumps(c.metadata, ensure_ascii=False, sort_keys=True)) for i, c in enumerate(chunks)])
            row += len(chunks)
        connection.commit()
    finally:
        connection.close()


def merge_chunk_stores(folder: Path, sources: list[tuple[Path, np.ndarray]]) -> int:
    """Copy the live rows of several segments' tables into one, renumbered in order, inside SQLite
    (ATTACH + INSERT ... SELECT), so a merge never holds millions of chunks in Python objects.
    Returns the number of documents written."""
    connection = sqlite3.connect(folder / FILE_NAME)
    try:
        connection.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;" + _SCHEMA)
        offset = 0
        for source, alive in sources:
            live_rows = np.flatnonzero(alive)
            connection.execute("ATTACH DATABASE ? AS src", (f"file:{(source / FILE_NAME).as_posix()}?mode=ro",))
            connection.execute("CREATE TEMP TABLE rowmap (old INTEGER PRIMARY KEY, new INTEGER NOT NULL)")
            connection.executemany("INSERT INTO rowmap VALUES (?, ?)",
                                   zip(live_rows.tolist(), range(offset, offset + len(live_rows))))
            connection.execute("INSERT INTO chunks SELECT m.new, c.doc_id, c.chunk_index, c.title, c.text, c.start, "
                               "c.end, c.metadata FROM src.chunks c JOIN rowmap m ON m.old = c.row ORDER BY m.new")
            connection.execute("INSERT INTO docs SELECT d.doc_id, d.hash, m.new, d.rows FROM src.docs d "
                               "JOIN rowmap m ON m.old = d.first_row")
            connection.commit()
            connection.execute("DROP TABLE rowmap")
            connection.execute("DETACH DATABASE src")
            offset += len(live_rows)
        return connection.execute("SELECT COUNT(*) FROM docs").fetchone()[0]
    finally:
        connection.close()


class ChunkStore:
    """Read-only view of one segment's tables; safe to share between threads."""

    def __init__(self, folder: Path) -> None:
        # Opened now and kept: the open descriptor keeps the file readable even after a newer
        # generation's garbage collection unlinks this segment.
        uri = f"file:{(folder / FILE_NAME).as_posix()}?mode=ro&immutable=1"
        self._db = sqlite3.connect(uri, uri=True, check_same_thread=False)
        self._db.create_function("mighty_json_extract", 2, extract_metadata, deterministic=True)
        self._lock = threading.Lock()
        self._tolerant = False

    def _execute(self, query: str, params=()) -> list[tuple]:
        with self._lock:
            return self._db.execute(query, params).fetchall()

    def documents(self) -> list[DocumentEntry]:
        rows = self._execute("SELECT doc_id, hash, first_row, rows FROM docs ORDER BY first_row")
        return [DocumentEntry(*row) for row in rows]

    def document(self, doc_id: str) -> DocumentEntry | None:
        rows = self._execute("SELECT doc_id, hash, first_row, rows FROM docs WHERE doc_id = ?", (doc_id,))
        return DocumentEntry(*rows[0]) if rows else None

    def chunks(self, rows: list[int]) -> dict[int, Chunk]:
        if not rows:
            return {}
        found: dict[int, Chunk] = {}
        for start in range(0, len(rows), 900):
            part = rows[start:start + 900]
            query = ("SELECT row, doc_id, chunk_index, text, start, end, title, metadata FROM chunks "
                     f"WHERE row IN ({','.join('?' * len(part))})")
            for row, doc_id, index, text, begin, end, title, metadata in self._execute(query, part):
                found[row] = Chunk(doc_id, index, text, begin, end, title, _metadata(metadata))
        return found

    def all_chunks(self) -> list[Chunk]:
        query = "SELECT doc_id, chunk_index, text, start, end, title, metadata FROM chunks ORDER BY row"
        return [Chunk(d, i, t, s, e, ti, _metadata(m)) for d, i, t, s, e, ti, m in self._execute(query)]

    def matching_rows(self, where: Filter, rows: int) -> np.ndarray:
        """A uint8 mask of rows whose metadata matches every condition (equality or `in`).

        The fast form runs first; only a segment holding metadata SQLite cannot parse (NaN from
        before ingest refused it) falls back to the tolerant form, and stays on it."""
        mask = np.zeros(rows, dtype=np.uint8)
        try:
            matched = self._matching(where, self._tolerant)
        except sqlite3.OperationalError as exc:
            if self._tolerant or "malformed JSON" not in str(exc):
                raise
            self._tolerant = True
            matched = self._matching(where, True)
        mask[np.asarray(matched, dtype=np.int64)] = 1
        return mask

    def _matching(self, where: Filter, tolerant: bool) -> list[int]:
        clauses, params = compile_filter(where, tolerant)
        return [r for (r,) in self._execute(f"SELECT row FROM chunks WHERE {clauses}", params)]


def _metadata(text: str) -> dict[str, Any]:
    """Stored metadata as a dict; NaN or Infinity (only in rows written before ingest refused them)
    reads as None, so a hit can always be sent as strict JSON."""
    return json.loads(text, parse_constant=lambda _: None)
