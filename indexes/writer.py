"""The single writer of a collection: upsert by content hash, delete, flush segments, commit.

One writer at a time holds an exclusive file lock; readers are never blocked. Nothing the writer
does is visible until `commit` publishes a generation, and a failed or killed writer leaves the
last committed generation untouched.
"""
from __future__ import annotations

import fcntl
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol

import numpy as np

from indexes.calibration import calibrate, keep_calibration, stamp
from indexes.chunk_store import DocumentEntry
from indexes.documents import SourceDocument, embedding_texts, non_finite_number
from indexes.durable import failpoint
from indexes.embedder_fingerprint import embedder_fingerprint
from indexes.embedder_provenance import EmbedderRun, shares
from indexes.generations import Manifest, SegmentRef, collect_garbage, commit_generation, next_generation_number
from indexes.merge import merge_segments
from indexes.segment import PendingDocument, Segment, write_segment
from indexes.snapshot import Snapshot
from indexes.sparse import SparseSegment

if TYPE_CHECKING:
    from indexes.collection import Collection

FLUSH_CHUNKS = 100_000
_REEMBED_BATCH = 4096  # chunks read and re-embedded at a time


class ProgressSink(Protocol):
    def start(self, stage: str, total: int | None) -> None: ...
    def advance(self, amount: int) -> None: ...


class NoProgress:
    def start(self, stage: str, total: int | None) -> None:
        pass

    def advance(self, amount: int) -> None:
        pass


class WriterBusy(RuntimeError):
    pass


@dataclass
class WriteReport:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    not_found: list[str] = field(default_factory=list)
    chunks_written: int = 0
    generation: int | None = None


def lock_for_writing(folder: Path, name: str, wait: bool = True) -> IO[str]:
    """The collection's exclusive write lock (an open file; closing it releases the lock). Needs nothing
    but the folder, so a collection whose config or segments are broken can still be locked and dropped."""
    lock_file = open(folder / "write.lock", "w")
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError as exc:
        lock_file.close()
        raise WriterBusy(f"collection {name!r} is being written by another process; retry when it finishes") from exc
    return lock_file


class CollectionWriter:
    def __init__(self, collection: "Collection", progress: ProgressSink | None = None, wait: bool = True) -> None:
        self._collection = collection
        self._progress = progress or NoProgress()
        self._lock_file = lock_for_writing(collection.folder, collection.name, wait)
        collect_garbage(collection.folder, collection.config.keep_generations)
        self._base = collection.load_snapshot()
        self._segments: list[Segment] = list(self._base.segments)
        self._deleted: dict[str, set[int]] = {
            s.id: set(np.flatnonzero(m == 0).tolist()) if m is not None else set()
            for s, m in zip(self._base.segments, self._base.live)}
        self._docs: dict[str, tuple[str, DocumentEntry]] = {}
        for segment, live in zip(self._base.segments, self._base.live):
            for entry in segment.documents():
                if live is None or live[entry.first_row]:
                    self._docs[entry.doc_id] = (segment.id, entry)
        self._pending: OrderedDict[str, PendingDocument] = OrderedDict()
        self._pending_chunks = 0
        self._changed = False
        self._changed_rows = 0  # chunks written or tombstoned since the last commit (recalibration)
        self._calibration = self._base.manifest.fusion  # the stored calibration the next commit may keep
        self._force_calibration = False
        self._embedders_checked: set[str | None] = set()  # None: the collection's own embedder
        self.report = WriteReport()

    # -- document operations ---------------------------------------------------------------
    def unchanged(self, document: SourceDocument) -> bool:
        """Whether `upsert` would skip this document (same content hash as pending or stored), so a
        caller that embeds elsewhere (`indexes.ray_ingest`) embeds only what will be written."""
        pending, stored = self._pending.get(document.id), self._docs.get(document.id)
        if pending is not None:
            return pending.content_hash == document.content_hash
        return stored is not None and stored[1].hash == document.content_hash

    def upsert(self, document: SourceDocument, vectors: np.ndarray | None = None,
               fingerprint: str | None = None) -> str:
        """Add or replace one document; returns 'added', 'updated' or 'unchanged'.

        `vectors` (one unit-length row per chunk) skips embedding, for callers that already have
        them, such as benchmarks replaying precomputed embeddings; `fingerprint` says which embedder
        made them (default: unknown origin, never checked). Embedding here with an embedder other
        than the one the stored vectors came from raises `EmbedderChanged` (`indexes.embedder_check`)."""
        if problem := non_finite_number(document.metadata):  # readers and REST refuse these earlier
            raise ValueError(f"document {document.id!r}: {problem}")
        content_hash = document.content_hash
        pending = self._pending.get(document.id)
        stored = self._docs.get(document.id)
        if pending is not None and pending.content_hash == content_hash or (
                pending is None and stored is not None and stored[1].hash == content_hash):
            self.report.unchanged += 1
            return "unchanged"
        if vectors is None or fingerprint is not None:
            self.check_embedder(fingerprint)
        chunks = self._collection.chunker.split(document)
        weight = self._collection.config.bm25.title_weight
        analyzer = self._collection.analyzer.for_document(f"{document.title}\n{document.text}")
        title_terms = analyzer.terms(document.title) * weight if document.title else []
        terms = [title_terms + analyzer.terms(c.text) for c in chunks]
        if pending is not None:
            self._pending_chunks -= len(pending.chunks)
            del self._pending[document.id]
        if vectors is not None and len(vectors) != len(chunks):
            raise ValueError(f"document {document.id!r} has {len(chunks)} chunks but {len(vectors)} vectors")
        self._pending[document.id] = PendingDocument(document.id, content_hash, chunks, terms, vectors,
                                                     fingerprint if vectors is not None else None)
        self._pending_chunks += len(chunks)
        self._changed = True
        outcome = "updated" if stored is not None or pending is not None else "added"
        setattr(self.report, outcome, getattr(self.report, outcome) + 1)
        if self._pending_chunks >= FLUSH_CHUNKS:
            self.flush()
        return outcome

    def check_embedder(self, fingerprint: str | None = None) -> None:
        """Refuse (`EmbedderChanged`) vectors that would not be comparable with the live ones, from an
        embedder (`fingerprint`; default the collection's own, loaded for it) other than the one they came
        from (`Collection.check_ingest`: measured for the own embedder); once per writer and embedder."""
        if fingerprint in self._embedders_checked:
            return
        self._collection.check_ingest(self._base, fingerprint)
        self._embedders_checked.add(fingerprint)

    def delete(self, doc_id: str) -> bool:
        found = False
        if doc_id in self._pending:
            self._pending_chunks -= len(self._pending.pop(doc_id).chunks)
            found = True
        if doc_id in self._docs:
            self._tombstone(doc_id)
            found = True
        if found:
            self.report.deleted += 1
            self._changed = True
        else:
            self.report.not_found.append(doc_id)
        return found

    def _tombstone(self, doc_id: str) -> None:
        segment_id, entry = self._docs.pop(doc_id)
        self._changed_rows += entry.rows
        self._deleted.setdefault(segment_id, set()).update(range(entry.first_row, entry.first_row + entry.rows))

    # -- persistence -----------------------------------------------------------------------
    def flush(self) -> None:
        """Embed pending documents and write them as a new (not yet committed) segment."""
        if not self._pending:
            return
        documents = list(self._pending.values())
        for doc in documents:
            if doc.doc_id in self._docs:
                self._tombstone(doc.doc_id)
        chunks = [c for d in documents for c in d.chunks]
        vectors, runs = self._vectors(documents, chunks)
        failpoint("before-segment")
        self._progress.start("writing segment", None)
        sparse = SparseSegment.build([t for d in documents for t in d.terms])
        segment_id = self._new_segment_id()
        folder = write_segment(self._collection.folder / "segments", segment_id, documents, sparse, vectors,
                               self._collection.config.dense, runs)
        segment = Segment.load(folder)
        self._segments.append(segment)
        self._deleted[segment.id] = set()
        for entry in segment.documents():
            self._docs[entry.doc_id] = (segment.id, entry)
        self.report.chunks_written += len(chunks)
        self._changed_rows += len(chunks)
        self._pending.clear()
        self._pending_chunks = 0

    def _vectors(self, documents: list[PendingDocument], chunks: list) -> tuple[np.ndarray, list[EmbedderRun]]:
        """The rows' vectors, and which embedder made which rows (`indexes.embedder_provenance`)."""
        if all(d.vectors is not None for d in documents):
            runs = [EmbedderRun(d.fingerprint, len(d.chunks)) for d in documents]
            return np.concatenate([d.vectors for d in documents]).astype(np.float32), runs
        texts = embedding_texts(chunks, self._collection.config.embedder.include_title)
        self._progress.start("embedding", len(texts))
        embedder = self._collection.embedder
        vectors = embedder.encode(texts, progress=self._progress.advance)
        return vectors, [EmbedderRun(embedder_fingerprint(embedder), len(texts))]

    def commit(self) -> Manifest | None:
        """Publish everything written so far as a new generation; None when nothing changed."""
        self.flush()
        if not self._changed:
            return None
        segments = [s for s in self._segments if len(self._deleted.get(s.id, ())) < s.rows]
        if len(segments) > self._collection.config.max_segments:
            segments = [self._merge(segments)]
        refs = [SegmentRef(s.id, s.rows, len(self._deleted.get(s.id, ()))) for s in segments]
        deletes = {s.id: np.fromiter(sorted(self._deleted.get(s.id, ())), dtype=np.int64) for s in segments}
        folder = self._collection.folder
        manifest = Manifest(next_generation_number(folder), refs, documents=len(self._docs),
                            chunks=sum(r.rows - r.deleted for r in refs))
        live = Snapshot(folder, manifest, segments, deletes).live
        manifest.embedders = shares([s.embedder_runs for s in segments], live)
        manifest.fusion = self._calibrate(manifest, segments, deletes)
        commit_generation(folder, manifest, deletes)
        self._calibration, self._changed_rows, self._force_calibration = manifest.fusion, 0, False
        failpoint("after-commit")
        collect_garbage(folder, self._collection.config.keep_generations)
        self._segments = segments
        self._changed = False
        self.report.generation = manifest.generation
        return manifest

    @property
    def changes_since_commit(self) -> int:
        """Chunks written or tombstoned since the last commit (after a flush: pending ones excluded)."""
        return self._changed_rows

    def recalibrate(self) -> Manifest | None:
        """Publish the same content as a new generation with a freshly measured fusion calibration
        (e.g. for collections committed before calibration existed); None when it is empty."""
        if not self._segments and not self._pending:
            return None
        self._changed = True
        self._force_calibration = True
        return self.commit()

    def reembed(self) -> Manifest | None:
        """Re-embed every live chunk with the current embedder and publish it as a new generation, with
        fusion calibrated again (`reembed_segments`); None when the collection is empty."""
        if not self.reembed_segments():
            return None
        self._force_calibration = True
        return self.commit()

    def reembed_segments(self) -> int:
        """Replace every segment by a copy whose vectors the current embedder made: chunk tables and BM25
        postings are copied as they are (`indexes.merge`), deleted rows dropped. Nothing is visible
        until `commit`; readers keep the old generation meanwhile. Returns the chunks re-embedded."""
        self.flush()
        embedder, include_title = self._collection.embedder, self._collection.config.embedder.include_title
        fingerprint = embedder_fingerprint(embedder)
        masks = []
        for segment in self._segments:
            alive = np.ones(segment.rows, dtype=np.uint8)
            alive[np.fromiter(self._deleted.get(segment.id, ()), dtype=np.int64)] = 0
            masks.append(alive)
        self._progress.start("re-embedding", int(sum(m.sum() for m in masks)))
        replaced, total = [], 0
        for segment, alive in zip(self._segments, masks):
            rows = np.flatnonzero(alive).tolist()
            if not rows:
                continue
            vectors = np.empty((len(rows), embedder.dim), dtype=np.float32)
            for start in range(0, len(rows), _REEMBED_BATCH):  # bounded memory on large segments
                part = rows[start:start + _REEMBED_BATCH]
                found = segment.store.chunks(part)
                texts = embedding_texts([found[r] for r in part], include_title)
                vectors[start:start + len(part)] = embedder.encode(texts, progress=self._progress.advance)
            folder = merge_segments(self._collection.folder / "segments", self._new_segment_id(), [segment], [alive],
                                    self._collection.config.dense, vectors, [EmbedderRun(fingerprint, len(rows))])
            replaced.append(self._adopt(Segment.load(folder)))
            total += len(rows)
        self._segments = replaced
        self._changed = True
        self._changed_rows += total
        return total

    def _calibrate(self, manifest: Manifest, segments: list[Segment], deletes: dict[str, np.ndarray]) -> dict | None:
        """Fusion settings for the generation about to be published (indexes.calibration): the stored
        calibration while the collection changed by at most `recalibrate_fraction` of the chunks it was
        measured on (a small upsert keeps it, instead of paying seconds of pseudo-queries per commit),
        otherwise measured again on this generation."""
        collection = self._collection
        fusion = collection.config.fusion
        if not fusion.calibrate:
            return None
        kept = keep_calibration(self._calibration, self._changed_rows, fusion.recalibrate_fraction)
        if kept is not None and not self._force_calibration:
            return kept
        self._progress.start("calibrating fusion", None)
        snapshot = Snapshot(collection.folder, manifest, segments, deletes)
        found = calibrate(snapshot, collection.config, collection.analyzer, collection.embedder)
        return stamp(found, manifest)

    def _merge(self, segments: list[Segment]) -> Segment:
        self._progress.start(f"merging {len(segments)} segments", None)
        live = []
        for segment in segments:
            deleted = self._deleted.get(segment.id, set())
            mask = None
            if deleted:
                mask = np.ones(segment.rows, dtype=np.uint8)
                mask[np.fromiter(deleted, dtype=np.int64)] = 0
            live.append(mask)
        folder = merge_segments(self._collection.folder / "segments", self._new_segment_id(), segments, live,
                                self._collection.config.dense)
        return self._adopt(Segment.load(folder))

    def _adopt(self, segment: Segment) -> Segment:
        """Make the documents of a segment that replaces others (merged, re-embedded) point at it."""
        self._deleted[segment.id] = set()
        for entry in segment.documents():
            self._docs[entry.doc_id] = (segment.id, entry)
        return segment

    def _new_segment_id(self) -> str:
        return f"seg-{next_generation_number(self._collection.folder):08d}-{uuid.uuid4().hex[:8]}"

    def close(self) -> None:
        if not self._lock_file.closed:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()

    def __enter__(self) -> "CollectionWriter":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

