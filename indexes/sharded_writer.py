"""The single writer of a sharded collection: every shard's own writer, then one atomic publication.

Each document goes to the shard a stable hash of its id names (`indexes.shards.shard_of`), so upserts,
deletes and content-hash skipping work per shard exactly as in one folder, each shard writing whole
segments in bulk with its own `CollectionWriter`. `commit` then publishes one sharded generation, with
the global BM25 statistics, by replacing the top-level CURRENT: readers see all shards' changes or
none. A writer killed between the shard commits and that last step leaves shard generations nobody
refers to; the next writer points each shard back at the generation the top level names first.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from indexes.calibration import calibrate, keep_calibration, stamp
from indexes.documents import SourceDocument
from indexes.durable import atomic_write_text, failpoint
from indexes.embedder_provenance import combine
from indexes.generations import CURRENT, current_generation, next_generation_number
from indexes.shards import GlobalStats, ShardedManifest, ShardStats, commit_sharded, shard_of
from indexes.writer import CollectionWriter, ProgressSink, WriteReport, lock_for_writing

if TYPE_CHECKING:
    from indexes.collection import ShardedCollection


def prepare_shard(folder: Path, generation: int) -> None:
    """Create a shard's folders, and point its CURRENT at the generation the top level names."""
    (folder / "segments").mkdir(parents=True, exist_ok=True)
    (folder / "generations").mkdir(exist_ok=True)
    if (current_generation(folder) or 0) == generation:
        return
    if generation:
        atomic_write_text(folder / CURRENT, f"{generation}\n")
    else:
        (folder / CURRENT).unlink()


class ShardedWriter:
    """The single writer of a sharded collection (the same interface as `CollectionWriter`)."""

    def __init__(self, collection: "ShardedCollection", progress: ProgressSink | None = None, wait: bool = True) -> None:
        self._collection = collection
        self._lock_file = lock_for_writing(collection.folder, collection.name, wait)
        self._writers: list[CollectionWriter] = []
        self._generation: int | None = None
        try:
            for shard, generation in zip(collection.shards, collection.committed().shards):
                prepare_shard(shard.folder, generation)
                self._writers.append(shard.writer(progress, wait))
        except BaseException:
            self.close()
            raise

    def _route(self, doc_id: str):
        return self._writers[shard_of(doc_id, len(self._writers))]

    def unchanged(self, document: SourceDocument) -> bool:
        return self._route(document.id).unchanged(document)

    def upsert(self, document: SourceDocument, vectors: np.ndarray | None = None,
               fingerprint: str | None = None) -> str:
        if vectors is None:
            self.check_embedder()  # collection-wide, before any shard embeds
        return self._route(document.id).upsert(document, vectors, fingerprint)

    def delete(self, doc_id: str) -> bool:
        return self._route(doc_id).delete(doc_id)

    def flush(self) -> None:
        for writer in self._writers:
            writer.flush()

    def commit(self, recalibrate: bool = False) -> ShardedManifest | None:
        """Commit every changed shard, then publish them together; None when nothing changed
        (`recalibrate`: publish anyway, with fusion measured again)."""
        self.flush()
        rows = sum(writer.changes_since_commit for writer in self._writers)
        changed = [writer.commit() is not None for writer in self._writers]
        if not any(changed) and not recalibrate:
            return None
        collection = self._collection
        previous = collection.committed()
        generations = [current_generation(shard.folder) or 0 for shard in collection.shards]
        sharded = ShardedManifest(next_generation_number(collection.folder), generations)
        snapshots = collection.shard_snapshots(sharded)
        sharded.stats = GlobalStats.combine([ShardStats.of(s) for s in snapshots])
        sharded.segments = [len(s.segments) for s in snapshots]
        sharded.documents = sum(s.manifest.documents for s in snapshots)
        sharded.chunks = sum(s.manifest.chunks for s in snapshots)
        sharded.embedders = combine(s.manifest.embedder_shares() for s in snapshots)
        sharded.fusion = self._calibrate(sharded, previous.fusion, rows, recalibrate)
        failpoint("before-sharded-commit")
        commit_sharded(collection.folder, sharded, collection.config.keep_generations)
        self._generation = sharded.generation
        return sharded

    def check_embedder(self) -> None:
        """`EmbedderChanged` when any shard's live vectors came from another embedder."""
        for writer in self._writers:
            writer.check_embedder()

    def reembed(self) -> ShardedManifest | None:
        """Re-embed every shard with the current embedder, then publish them together with fusion measured
        again (`CollectionWriter.reembed_segments`); None when the collection is empty."""
        if not sum(writer.reembed_segments() for writer in self._writers):
            return None
        return self.commit(recalibrate=True)

    def recalibrate(self) -> ShardedManifest | None:
        """Publish the same shards as a new sharded generation with fusion measured again."""
        return self.commit(recalibrate=True)

    def _calibrate(self, sharded: ShardedManifest, stored: dict | None, changed: int, force: bool) -> dict | None:
        """Fusion calibrated on the whole collection through the shard coordinator, so pseudo-queries
        see exactly what real queries will (global BM25 statistics, every shard's candidates); kept
        from the stored one while little changed, as for a single folder (`CollectionWriter`)."""
        collection = self._collection
        fusion = collection.config.fusion
        if not fusion.calibrate:
            return None
        kept = keep_calibration(stored, changed, fusion.recalibrate_fraction)
        if kept is not None and not force:
            return kept
        snapshot = collection.snapshot_of(sharded)
        return stamp(calibrate(snapshot, collection.config, collection.analyzer, collection.embedder), sharded)

    @property
    def report(self) -> WriteReport:
        """The shards' reports added up, with the sharded generation this writer committed."""
        total = WriteReport(generation=self._generation)
        for writer in self._writers:
            part = writer.report
            total.added += part.added
            total.updated += part.updated
            total.unchanged += part.unchanged
            total.deleted += part.deleted
            total.not_found.extend(part.not_found)
            total.chunks_written += part.chunks_written
        return total

    def close(self) -> None:
        for writer in self._writers:
            writer.close()
        if not self._lock_file.closed:
            self._lock_file.close()

    def __enter__(self) -> "ShardedWriter":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
