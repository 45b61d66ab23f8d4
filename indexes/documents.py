"""The records that flow through ingest: source documents, their chunks, and rejections."""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SourceDocument:
    """One document as read from a file or a JSONL line, before chunking."""

    id: str
    text: str
    title: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    line: int | None = field(default=None, compare=False)  # 1-based line of a JSONL record, for reports

    @property
    def content_hash(self) -> str:
        """Hash of everything that ends up in the index, so unchanged documents can be skipped."""
        payload = json.dumps([self.title, self.text, self.metadata], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Chunk:
    """A span of a document: `text == document.text[start:end]`, so answers can cite it exactly."""

    doc_id: str
    chunk_index: int
    text: str
    start: int
    end: int
    title: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Rejection:
    """Input that could not be ingested; `line` is 1-based when the problem is inside a file."""

    source: str
    reason: str
    line: int | None = None

    @property
    def location(self) -> str:
        return f"{self.source}:{self.line}" if self.line is not None else self.source

    def __str__(self) -> str:
        return f"{self.location}: {self.reason}"


def non_finite_number(metadata: Any, where: str = "metadata") -> str | None:
    """The reason metadata cannot be stored, if it holds NaN or ±Infinity anywhere (nested too).

    Python's json reads `NaN` and `Infinity` (and turns 1e999 into inf), but they are not JSON:
    SQLite cannot evaluate filters over them and clients cannot parse them back. Walked with an
    explicit stack, so deeply nested metadata cannot exhaust the interpreter's recursion limit."""
    stack: list[tuple[str, Any]] = [(where, metadata)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            shown = path if len(path) < 120 else path + "…"
            return f"{shown} is {value}: metadata numbers must be finite (JSON has no NaN or Infinity)"
        short = len(path) < 120  # deeper paths are shown cut short, and cost no quadratic copying
        if isinstance(value, dict):
            stack.extend((f"{path}.{str(key)[:40]}" if short else path, item) for key, item in value.items())
        elif isinstance(value, (list, tuple)):
            stack.extend((f"{path}[{i}]" if short else path, item) for i, item in enumerate(value))
    return None


@dataclass(frozen=True)
class Skipped(Rejection):
    """A file met while walking a folder that is not a document (e.g. `cards/x.toml` in `data/`).

    Counted in the summary, not an error: only files named explicitly must be documents. A
    subclass of `Rejection` so callers that only know rejections still never index it."""


def format_size(size: int) -> str:
    """Sizes in binary units everywhere (`10 MiB`, `10.5 MiB`), so limits and sizes compare at a glance."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{size} bytes"


def embedding_texts(chunks: list, include_title: bool) -> list[str]:
    """What the embedder reads for each chunk (its title first, when the collection says so): at
    ingest, at re-embedding and when stored vectors are checked against the current embedder."""
    return [f"{c.title}\n{c.text}" if include_title and c.title else c.text for c in chunks]
