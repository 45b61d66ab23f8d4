"""Training corpora: documents grouped by a key, and a held-out split by that key.

A card's held-out perplexity only means something if no held-out text was trained on. Corpora such
as pg-essays arrive as overlapping chunks of longer documents, so chunks are grouped back into
documents (by title when there is one, else by document id) and the split is drawn over documents,
never over chunks. The split is a pure function of (keys, seed, fraction): each key is ranked by a
hash of seed and key, so adding documents later never moves an existing one across the split.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from indexes.documents import Rejection, SourceDocument

COLLECTION_PREFIX = "collection:"
_MAX_DOCUMENT_BYTES = 64 * 1024 * 1024
_MIN_OVERLAP = 16  # shorter shared edges are coincidence, not chunk overlap


class CorpusError(ValueError):
    """The corpus cannot be used for training; the message names the file (and line) and what to fix."""


@dataclass(frozen=True)
class CorpusDocument:
    key: str  # what the split is drawn over: a title, else a document id or path
    text: str


@dataclass(frozen=True)
class Corpus:
    source: str  # the path or collection:<name> as given
    key: str  # "title", "id", or "title-or-id" when only some documents have a title
    documents: list[CorpusDocument]

    @property
    def sha256(self) -> str:
        """Hash of the documents as training sees them, so a file and a collection with the same
        content hash alike and a later evaluation can check it reads the corpus the card saw."""
        digest = hashlib.sha256()
        for document in self.documents:
            for part in (document.key, document.text):
                data = part.encode("utf-8")
                digest.update(len(data).to_bytes(8, "little"))
                digest.update(data)
        return digest.hexdigest()

    @property
    def name(self) -> str:
        """A short human name: the collection, or the file's folder when the file is a generic corpus.jsonl."""
        if self.source.startswith(COLLECTION_PREFIX):
            return self.source[len(COLLECTION_PREFIX):]
        path = Path(self.source)
        return path.parent.name if path.stem in ("corpus", "data", "train") and path.parent.name else path.stem


def load_corpus(spec: str, home_root: Path | None = None) -> Corpus:
    """Read a JSONL/text/markdown file or folder, or `collection:<name>` from the Mighty home."""
    if spec.startswith(COLLECTION_PREFIX):
        if home_root is None:
            raise CorpusError(f"{spec}: a collection corpus needs a Mighty home (--home or MIGHTY_HOME)")
        parts = _collection_documents(spec[len(COLLECTION_PREFIX):], home_root)
    else:
        parts = _file_documents(spec)
    return group_documents(spec, parts)


def group_documents(source: str, parts: list[SourceDocument]) -> Corpus:
    """Join the parts sharing a key (in reading order, dropping the text neighbouring chunks share)."""
    if not parts:
        raise CorpusError(f"{source}: the corpus has no documents; give a JSONL file of "
                          "{\"_id\", \"title\", \"text\"} lines, text/markdown files, or collection:NAME")
    titled = sum(1 for part in parts if part.title.strip())
    key_name = "title" if titled == len(parts) else "id" if titled == 0 else "title-or-id"
    grouped: dict[str, list[str]] = {}
    for part in parts:
        grouped.setdefault(part.title.strip() or part.id, []).append(part.text)
    documents = [CorpusDocument(key, join_overlapping(texts)) for key, texts in grouped.items()]
    return Corpus(source, key_name, documents)


def join_overlapping(texts: list[str]) -> str:
    """Concatenate consecutive chunks, writing text that ends one chunk and starts the next only once."""
    joined = texts[0]
    for text in texts[1:]:
        overlap = _overlap(joined, text)
        joined = joined + text[overlap:] if overlap else f"{joined}\n\n{text}"
    return joined


def _overlap(left: str, right: str, window: int = 4000) -> int:
    """Length of the longest suffix of `left` that is a prefix of `right` (0 when under _MIN_OVERLAP)."""
    if len(right) < _MIN_OVERLAP:
        return 0
    probe, tail = right[:_MIN_OVERLAP], left[-window:]
    start = tail.find(probe)
    best = 0
    while start != -1:
        length = len(tail) - start
        if length <= len(right) and right.startswith(tail[start:]):
            best = length
            break  # the first match from the left is the longest overlap
        start = tail.find(probe, start + 1)
    return best


def split_heldout(keys: list[str], fraction: float, seed: int) -> list[str]:
    """The held-out keys: `fraction` of the documents (at least one, never all), chosen by seeded hash."""
    if not 0.0 < fraction < 1.0:
        raise CorpusError(f"held-out fraction must be between 0 and 1 (exclusive), got {fraction}")
    unique = sorted(set(keys))
    if len(unique) < 2:
        raise CorpusError(f"the corpus has {len(unique)} document(s); at least 2 are needed so one can be "
                          "held out for perplexity (documents are grouped by title, else by id)")
    count = min(len(unique) - 1, max(1, round(fraction * len(unique))))
    ranked = sorted(unique, key=lambda key: hashlib.sha256(f"{seed}\x00{key}".encode("utf-8")).hexdigest())
    return sorted(ranked[:count])


def _file_documents(spec: str) -> list[SourceDocument]:
    from indexes.readers import read_paths

    path = Path(spec).expanduser()
    if not path.exists():
        raise CorpusError(f"{spec}: no such file or folder; give a JSONL/text/markdown file or folder, "
                          "or collection:NAME")
    parts: list[SourceDocument] = []
    for result in read_paths([str(path)], _MAX_DOCUMENT_BYTES):
        if isinstance(result, Rejection):
            if result.reason == "empty file" and path.is_file():
                raise CorpusError(f"{result.source}: the corpus is empty; it needs at least 2 documents")
            raise CorpusError(f"{result}; fix or remove it and run again")
        parts.append(result)
    return parts


def _collection_documents(name: str, home_root: Path) -> list[SourceDocument]:
    """Rebuild each stored document from its chunks (their offsets say where each begins)."""
    from indexes.collection import CollectionBroken, CollectionNotFound, Home
    from indexes.names import InvalidCollectionName

    try:
        collection = Home(home_root).open(name)
        snapshot = collection.snapshot()
    except (CollectionNotFound, InvalidCollectionName, CollectionBroken) as error:
        raise CorpusError(f"{COLLECTION_PREFIX}{name}: {error}") from None
    pieces: dict[str, list] = {}
    for segment, live in zip(snapshot.segments, snapshot.live):
        for row, chunk in enumerate(segment.store.all_chunks()):
            if live is None or live[row]:
                pieces.setdefault(chunk.doc_id, []).append(chunk)
    parts = []
    for doc_id, chunks in pieces.items():
        chunks.sort(key=lambda chunk: chunk.start)
        text, end = "", 0
        for chunk in chunks:
            if chunk.end > end:
                text += chunk.text[max(0, end - chunk.start):]
                end = chunk.end
        parts.append(SourceDocument(doc_id, text, chunks[0].title, {}, f"{COLLECTION_PREFIX}{name}"))
    return parts
