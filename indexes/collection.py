"""Named collections inside one Mighty home folder: create, open, list, delete, read and write.

`Collection` is the small interface a distributed engine would place on each shard: `writer()`
(upsert, delete, commit) and `snapshot()` (search); BM25 statistics come from the snapshot
separately from postings, so a coordinator can sum them across shards.
"""
from __future__ import annotations

import shutil
import threading
import uuid
from functools import cached_property
from pathlib import Path

from indexes.analyzer import Analyzer
from indexes.chunking import TokenChunker, load_fast_tokenizer
from indexes.config import CollectionConfig
from indexes.durable import publish_folder
from indexes.embedders import Embedder, load_embedder, resolve_model
from indexes.generations import Manifest, current_generation, list_generations, read_generation
from indexes.segment import Segment
from indexes.snapshot import Snapshot
from indexes.writer import CollectionWriter, ProgressSink


class CollectionNotFound(LookupError):
    pass


class CollectionExists(ValueError):
    pass


class Collection:
    def __init__(self, folder: Path, config: CollectionConfig) -> None:
        self.folder, self.config = folder, config
        self._snapshot: Snapshot | None = None
        self._segments: dict[str, Segment] = {}
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.config.name

    @cached_property
    def analyzer(self) -> Analyzer:
        return Analyzer(self.config.bm25)

    @cached_property
    def embedder(self) -> Embedder:
        return load_embedder(self.config.embedder)

    @cached_property
    def chunker(self) -> TokenChunker:
        return TokenChunker(load_fast_tokenizer(resolve_model(self.config.embedder.model)), self.config.chunking)

    def snapshot(self) -> Snapshot:
        """The latest committed generation; reloaded only when CURRENT has moved."""
        generation = current_generation(self.folder) or 0
        current = self._snapshot
        if current is not None and current.generation == generation:
            return current
        with self._lock:
            if self._snapshot is None or self._snapshot.generation != generation:
                self._snapshot = self.load_snapshot()
            return self._snapshot

    def load_snapshot(self) -> Snapshot:
        generation = current_generation(self.folder)
        if generation is None:
            return Snapshot(self.folder, Manifest(0), [], {})
        manifest, deletes = read_generation(self.folder, generation)
        segments = []
        for ref in manifest.segments:
            segment = self._segments.get(ref.id)
            if segment is None:
                segment = Segment.load(self.folder / "segments" / ref.id)
            segments.append(segment)
        self._segments = {s.id: s for s in segments}
        return Snapshot(self.folder, manifest, segments, deletes)

    def writer(self, progress: ProgressSink | None = None, wait: bool = True) -> CollectionWriter:
        return CollectionWriter(self, progress, wait)

    def stats(self) -> dict:
        """What `mighty index stats` and `GET /v1/collections/{name}` report."""
        snapshot, config = self.snapshot(), self.config
        return {"name": self.name, "owner": config.owner, "documents": snapshot.manifest.documents,
                "chunks": snapshot.manifest.chunks, "generation": snapshot.generation,
                "generations": len(list_generations(self.folder)), "segments": len(snapshot.segments),
                "deleted_rows": sum(r.deleted for r in snapshot.manifest.segments),
                "size_bytes": snapshot.size_on_disk(), "embedder": config.embedder.model,
                "embedder_backend": config.embedder.backend, "chunk_size": config.chunking.size,
                "chunk_overlap": config.chunking.overlap, "default_llm": config.default_llm,
                "fusion": self.fusion_settings(snapshot)}

    def fusion_settings(self, snapshot: Snapshot) -> dict:
        """The hybrid fusion queries of this snapshot get: calibrated at commit, else configured."""
        fusion = self.config.fusion
        if fusion.calibrate and snapshot.manifest.fusion:
            return {"source": "calibrated", **snapshot.manifest.fusion}
        return {"source": "configured", "dense_weight": fusion.dense_weight, "normalisation": "minmax",
                "adaptive": fusion.adaptive}


class Home:
    """The single data folder (`--home` / `MIGHTY_HOME`) holding every collection."""

    def __init__(self, root: Path) -> None:
        self.root = root.expanduser()
        self.collections_dir = self.root / "collections"
        self._open: dict[str, Collection] = {}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        if not self.collections_dir.exists():
            return []
        return sorted(p.name for p in self.collections_dir.iterdir()
                      if p.is_dir() and not p.name.startswith(".") and (p / "collection.json").exists())

    def create(self, config: CollectionConfig) -> Collection:
        final = self.collections_dir / config.name
        if final.exists():
            raise CollectionExists(f"collection {config.name!r} already exists")
        temporary = self.collections_dir / f".tmp-{config.name}-{uuid.uuid4().hex[:8]}"
        (temporary / "segments").mkdir(parents=True)
        (temporary / "generations").mkdir()
        (temporary / "collection.json").write_text(config.model_dump_json(indent=2), encoding="utf-8")
        try:
            publish_folder(temporary, final)
        except OSError as exc:
            shutil.rmtree(temporary, ignore_errors=True)
            raise CollectionExists(f"collection {config.name!r} already exists") from exc
        return self.open(config.name)

    def open(self, name: str) -> Collection:
        with self._lock:
            if name in self._open and (self._open[name].folder / "collection.json").exists():
                return self._open[name]
            folder = self.collections_dir / name
            config_file = folder / "collection.json"
            if not config_file.exists():
                known = ", ".join(self.names()) or "none yet"
                raise CollectionNotFound(f"unknown collection {name!r} (known: {known}); "
                                         f"create it with `mighty index add PATH --collection {name}`")
            config = CollectionConfig.model_validate_json(config_file.read_text(encoding="utf-8"))
            self._open[name] = Collection(folder, config)
            return self._open[name]

    def open_or_create(self, config: CollectionConfig) -> Collection:
        try:
            return self.open(config.name)
        except CollectionNotFound:
            try:
                return self.create(config)
            except CollectionExists:
                return self.open(config.name)

    def delete(self, name: str) -> None:
        collection = self.open(name)
        with collection.writer():
            graveyard = self.collections_dir / f".deleted-{name}-{uuid.uuid4().hex[:8]}"
            collection.folder.rename(graveyard)
        with self._lock:
            self._open.pop(name, None)
        shutil.rmtree(graveyard, ignore_errors=True)
