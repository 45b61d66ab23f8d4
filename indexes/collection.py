"""Named collections inside one Mighty home folder: create, open, list, delete, read and write.

`Collection` is the small interface a distributed engine places on each shard: `writer()`
(upsert, delete, commit) and `snapshot()` (search); BM25 statistics come from the snapshot
separately from postings, so a coordinator can sum them across shards. `ShardedCollection` is that
coordinator's collection: S shard folders (`ShardCollection`s) behind one generation pointer.
"""
from __future__ import annotations

import shutil
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path

from indexes.analyzer import Analyzer
from indexes.chunking import TokenChunker, load_fast_tokenizer
from indexes.config import CollectionConfig
from indexes.durable import atomic_write_text, publish_folder
from indexes.embedder_allowlist import EmbedderAllowList, EmbedderNotAllowed
from indexes.embedder_check import AgreementCache, ingest_conflict, stale
from indexes.embedder_fingerprint import embedder_fingerprint
from indexes.embedders import Embedder, load_embedder, resolve_model
from indexes.generations import Manifest, current_generation, list_generations, read_generation
from indexes.segment import Segment
from indexes.shard_search import LocalFanout, ShardedSnapshot, ShardSearcher
from indexes.sharded_writer import ShardedWriter
from indexes.shards import ShardedManifest, read_sharded, shard_folder
from indexes.snapshot import Snapshot
from indexes.names import InvalidCollectionName, collection_folder
from indexes.writer import CollectionWriter, ProgressSink, lock_for_writing


class CollectionNotFound(LookupError):
    pass


class CollectionExists(ValueError):
    pass


class CollectionBroken(RuntimeError):
    """The collection exists but cannot serve: unreadable config or files, or an embedder that is not
    (or no longer) allowed or loadable. Other collections are unaffected; it can still be dropped."""


class Collection:
    def __init__(self, folder: Path, config: CollectionConfig, allowed: EmbedderAllowList | None = None) -> None:
        self.folder, self.config = folder, config
        self.allowed = allowed or EmbedderAllowList()
        self._snapshot: Snapshot | None = None
        self._segments: dict[str, Segment] = {}
        self._lock = threading.Lock()
        self._agreement = AgreementCache()

    @property
    def name(self) -> str:
        return self.config.name

    @cached_property
    def analyzer(self) -> Analyzer:
        return Analyzer(self.config.bm25)

    @cached_property
    def embedder(self) -> Embedder:
        with self._broken_if_failing("cannot load its embedder"):
            return load_embedder(self.config.embedder, self.allowed)

    @cached_property
    def chunker(self) -> TokenChunker:
        with self._broken_if_failing("cannot load its embedder's tokenizer"):
            folder = resolve_model(self.config.embedder.model, self.allowed)
            return TokenChunker(load_fast_tokenizer(folder), self.config.chunking)

    @contextmanager
    def _broken_if_failing(self, what: str) -> Iterator[None]:
        """Any failure to load what this collection needs makes it `CollectionBroken`, naming it."""
        try:
            yield
        except CollectionBroken:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever broke, this one collection cannot serve
            reason = str(exc).replace(str(self.folder), "<collection folder>")  # no server paths in answers
            raise CollectionBroken(f"collection {self.name!r} {what}: {type(exc).__name__}: {reason}") from exc

    def snapshot(self) -> Snapshot:
        """The latest committed generation; reloaded only when CURRENT has moved."""
        with self._broken_if_failing("cannot read its index files"):
            generation = current_generation(self.folder) or 0
            current = self._snapshot
            if current is not None and current.generation == generation:
                return current
            with self._lock:
                if self._snapshot is None or self._snapshot.generation != generation:
                    self._snapshot = self.load_snapshot()
                return self._snapshot

    def load_snapshot(self, generation: int | None = None) -> Snapshot:
        """The given committed generation (a sharded collection pins each shard's), else the current one."""
        generation = current_generation(self.folder) if generation is None else generation
        if not generation:
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

    def embedder_fingerprint(self) -> str | None:
        """The fingerprint of the embedder this collection embeds with now (loads it)."""
        return embedder_fingerprint(self.embedder)

    def check_ingest(self, snapshot: Snapshot | None = None, fingerprint: str | None = None) -> None:
        """`EmbedderChanged` when new vectors would not be comparable with the stored ones
        (`indexes.embedder_check`): those of this collection's embedder when its fingerprint changed and
        the stored vectors measurably disagree with it, or vectors supplied under another `fingerprint`
        (not measurable here). REST and the CLI call it before accepting work, the writer again on its
        first embedded document; a measurement is made once per fingerprint pair and process."""
        snapshot = snapshot or self.snapshot()
        shares = snapshot.manifest.embedder_shares()
        if not any(share.fingerprint for share in shares):
            return
        own = fingerprint is None
        current = self.embedder_fingerprint() if own else fingerprint
        if not stale(shares, current):
            return
        measured = None
        if own:
            agree, measured = self._agreement.disagreement(snapshot, str(current), self._encode_passages,
                                                           self.config.embedder.include_title)
            if agree:
                return
        raise ingest_conflict(self.name, shares, current, measured)

    def require_dense(self, snapshot: Snapshot) -> None:
        """`EmbedderIncompatible` when this snapshot's stored vectors measurably disagree with the current
        embedder; measured once per (stored, current) fingerprint pair, then a lookup per query."""
        self._agreement.require_dense(self.name, snapshot, self.embedder_fingerprint, self._encode_passages,
                                      self.config.embedder.include_title)

    def _encode_passages(self, texts: list[str]):
        return self.embedder.encode(texts)  # stored vectors are passages, never queries

    def embedder_report(self, snapshot: Snapshot, measure: bool) -> dict:
        """Stored fingerprints for stats; with `measure` (or once the embedder is loaded anyway) also
        the current one and how the stored vectors agree with it."""
        shares = snapshot.manifest.embedder_shares()
        report: dict = {"embedder_fingerprints": [{"fingerprint": s.fingerprint or "unknown (written before "
                                                   "fingerprints, or vectors supplied by the caller)",
                                                   "chunks": s.chunks} for s in shares]}
        if not (measure or "embedder" in self.__dict__) or not any(s.fingerprint for s in shares):
            return report
        current = self.embedder_fingerprint()
        verdicts = self._agreement.verdicts(snapshot, current, self._encode_passages, self.config.embedder.include_title)
        report["embedder_current"] = current
        report["embedder_check"] = ("; ".join(v.describe(self.name) for v in verdicts) if verdicts
                                    else "stored vectors come from the current embedder")
        return report

    def stats(self, check_embedder: bool = False) -> dict:
        """What `mighty index stats` and `GET /v1/collections/{name}` report (`check_embedder`: load the
        embedder to compare it with the stored vectors' fingerprints, see `embedder_report`)."""
        snapshot, config = self.snapshot(), self.config
        return {"name": self.name, "owner": config.owner, "documents": snapshot.manifest.documents,
                "chunks": snapshot.manifest.chunks, "generation": snapshot.generation,
                "generations": len(list_generations(self.folder)), "segments": len(snapshot.segments),
                "deleted_rows": sum(r.deleted for r in snapshot.manifest.segments),
                "size_bytes": snapshot.size_on_disk(), "embedder": config.embedder.model,
                "embedder_backend": config.embedder.backend, "chunk_size": config.chunking.size,
                "chunk_overlap": config.chunking.overlap, "default_llm": config.default_llm,
                "analyzer": config.bm25.analyzer, "language": config.bm25.language,
                "fusion": self.fusion_settings(snapshot), **self.embedder_report(snapshot, check_embedder)}

    def fusion_settings(self, snapshot: Snapshot) -> dict:
        """The hybrid fusion queries of this snapshot get: calibrated at commit, else configured."""
        fusion = self.config.fusion
        stored = getattr(snapshot.manifest, "fusion", None)
        if fusion.calibrate and stored:
            return {"source": "calibrated", **stored, **_freshness(stored, snapshot.generation, fusion.recalibrate_fraction)}
        return {"source": "configured", "dense_weight": fusion.dense_weight, "normalisation": "minmax",
                "adaptive": fusion.adaptive}


def _freshness(stored: dict, generation: int, fraction: float) -> dict:
    """What `index stats` says about a stored calibration: measured on this generation, or kept from an
    earlier one because little changed since (and when the next commit will measure it again)."""
    if "calibrated_chunks" not in stored:
        return {}
    measured = stored["calibrated_generation"]
    limit = int(fraction * stored["calibrated_chunks"])
    state = ("measured on this generation" if measured == generation else
             f"kept from generation {measured}: {stored['changed_chunks']} chunks changed since")
    return {"calibration": f"{state}; recalibrates when more than {limit} chunks have changed"}


class ShardCollection(Collection):
    """One shard's folder, sharing its parent's (already loaded) embedder and chunker."""

    def __init__(self, parent: "ShardedCollection", index: int) -> None:
        # fusion is calibrated once on the whole sharded collection (ShardedWriter), never per shard
        config = parent.config.model_copy(update={"fusion": parent.config.fusion.model_copy(update={"calibrate": False})})
        super().__init__(shard_folder(parent.folder, index), config, parent.allowed)
        self.parent, self.index = parent, index

    @property
    def embedder(self) -> Embedder:  # type: ignore[override]
        return self.parent.embedder

    @property
    def chunker(self) -> TokenChunker:  # type: ignore[override]
        return self.parent.chunker


class ShardedCollection(Collection):
    """A collection split into `config.shards` shard folders behind one generation pointer
    (`indexes.shards`): the same config, embedder, analyzer, retriever, REST and CLI as any collection;
    only where rows live differs. Its snapshot is the shard coordinator (`indexes.shard_search`)."""

    def __init__(self, folder: Path, config: CollectionConfig, allowed: EmbedderAllowList | None = None) -> None:
        super().__init__(folder, config, allowed)
        self.shards = [ShardCollection(self, i) for i in range(config.shards)]

    def shard_snapshots(self, sharded: ShardedManifest) -> list[Snapshot]:
        """Each shard at the generation the sharded generation names (not the shard's own CURRENT,
        which a writer moves before the top level)."""
        return [shard.load_snapshot(generation) for shard, generation in zip(self.shards, sharded.shards)]

    def committed(self) -> ShardedManifest:
        return read_sharded(self.folder) or ShardedManifest(0, [0] * len(self.shards))

    def snapshot(self) -> ShardedSnapshot:  # type: ignore[override]
        """The latest sharded generation, as a per-query view that records which shards answered."""
        return super().snapshot().for_query()  # type: ignore[attr-defined]

    def load_snapshot(self, generation: int | None = None) -> ShardedSnapshot:  # type: ignore[override]
        return self.snapshot_of(self.committed())

    def snapshot_of(self, sharded: ShardedManifest) -> ShardedSnapshot:
        """The in-process coordinator over one sharded generation (committed, or about to be)."""
        snapshots = self.shard_snapshots(sharded)
        searchers = [ShardSearcher(snapshot, self.config.bm25) for snapshot in snapshots]
        return ShardedSnapshot(sharded, LocalFanout(searchers), [len(s.segments) for s in snapshots], snapshots)

    def writer(self, progress: ProgressSink | None = None, wait: bool = True) -> ShardedWriter:  # type: ignore[override]
        return ShardedWriter(self, progress, wait)

    def stats(self, check_embedder: bool = False) -> dict:
        return {**super().stats(check_embedder), "shards": len(self.shards)}


class Home:
    """The single data folder (`--home` / `MIGHTY_HOME`) holding every collection.

    Every caller (CLI, REST, LangChain, cards) reaches a collection through `open`, `create` or `delete`,
    so the name rule (`indexes.names`) and the embedder allow-list are enforced here, once."""

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

    def embedders(self) -> EmbedderAllowList:
        """The embedders collections in this home may use (shipped + `<home>/embedders.toml`)."""
        return EmbedderAllowList.for_home(self.root)

    def create(self, config: CollectionConfig) -> Collection:
        final = collection_folder(self.collections_dir, config.name)
        self.embedders().check(config.embedder.model)
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
        folder = collection_folder(self.collections_dir, name)
        with self._lock:
            if name in self._open and (self._open[name].folder / "collection.json").exists():
                return self._open[name]
            config_file = folder / "collection.json"
            if not config_file.exists():
                known = ", ".join(self.names()) or "none yet"
                raise CollectionNotFound(f"unknown collection {name!r} (known: {known}); "
                                         f"create it with `mighty index add PATH --collection {name}`")
            try:
                config = CollectionConfig.from_stored(config_file.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, ValueError) as exc:
                raise CollectionBroken(f"collection {name!r} has an unreadable collection.json "
                                       f"({type(exc).__name__}); drop it with `mighty index drop {name}`") from None
            kind = ShardedCollection if config.shards > 1 else Collection
            self._open[name] = kind(folder, config, self.embedders())
            return self._open[name]

    def update_config(self, name: str, **changes: object) -> Collection:
        """Change settings that do not touch the index (the default LLM, say): validated as a whole, written
        under the collection's write lock with the crash-safe replace, then reopened with them."""
        folder = collection_folder(self.collections_dir, name)
        collection = self.open(name)
        lock = lock_for_writing(folder, name)
        try:
            config = CollectionConfig.model_validate({**collection.config.model_dump(), **changes})
            atomic_write_text(folder / "collection.json", config.model_dump_json(indent=2))
        finally:
            lock.close()
        with self._lock:
            self._open.pop(name, None)
        return self.open(name)

    def open_or_create(self, config: CollectionConfig) -> Collection:
        try:
            return self.open(config.name)
        except CollectionNotFound:
            try:
                return self.create(config)
            except CollectionExists:
                return self.open(config.name)

    def describe(self, name: str) -> dict:
        """`Collection.stats()`, or for a broken collection its name and what is wrong (listings go on)."""
        try:
            collection = self.open(name)
            collection.allowed.folder(collection.config.embedder.model)  # a name check, no model loading
            return collection.stats()
        except (CollectionBroken, EmbedderNotAllowed) as exc:
            return {"name": name, "broken": str(exc)}
        except InvalidCollectionName as exc:  # a folder from before the name rule: rename it to use it
            return {"name": name, "broken": f"{exc}; rename its folder"}

    def delete(self, name: str) -> None:
        """Remove a collection, broken or not: needs only its folder and write lock, never its config."""
        folder = collection_folder(self.collections_dir, name)
        if not (folder / "collection.json").exists():
            raise CollectionNotFound(f"unknown collection {name!r} (known: {', '.join(self.names()) or 'none yet'})")
        lock = lock_for_writing(folder, name)
        try:
            graveyard = self.collections_dir / f".deleted-{name}-{uuid.uuid4().hex[:8]}"
            folder.rename(graveyard)
        finally:
            lock.close()
        with self._lock:
            self._open.pop(name, None)
        shutil.rmtree(graveyard, ignore_errors=True)
