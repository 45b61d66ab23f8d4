"""The storage side of sharded collections: routing, global BM25 statistics, sharded generations.

A sharded collection keeps S ordinary collection folders under `shards/shard-NNN/` (segments and
generations of their own) and, at its top level, *sharded generations*: which generation of every
shard belongs together, plus the collection-wide BM25 statistics (N, total length, document
frequencies) computed once at commit. Readers follow the top-level CURRENT only, so a commit that
touched several shards is seen whole or not at all; every shard then scores with collection-wide
idf and average length (Elasticsearch's dfs_query_then_fetch, with the dfs phase done once per
generation instead of once per query).
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from indexes.generations import EmbedderShare, commit_generation, current_generation, generation_folder, list_generations
from indexes.snapshot import Snapshot
from indexes.sparse import CollectionStats, robertson_mean_idf


def shard_of(doc_id: str, shards: int) -> int:
    """The shard that holds a document: a stable hash of its id (the same on every machine and
    Python process, unlike `hash()`), so an upsert or delete always reaches the shard that has it."""
    digest = hashlib.blake2b(doc_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


def shard_folder(collection_folder: Path, shard: int) -> Path:
    return collection_folder / "shards" / f"shard-{shard:03d}"


@dataclass(frozen=True)
class GlobalStats:
    """BM25 statistics of a whole collection, summed over its shards' live rows."""

    documents: int = 0
    total_length: float = 0.0
    mean_idf: float = 0.0  # only the "robertson" idf floor uses it
    df: dict[str, int] = field(default_factory=dict)

    def collection_stats(self) -> CollectionStats:
        return CollectionStats(self.documents, self.total_length, self.mean_idf)

    def frequencies(self, terms: list[str]) -> np.ndarray:
        return np.asarray([self.df.get(t, 0) for t in terms], dtype=np.int64)

    @classmethod
    def combine(cls, parts: list["ShardStats"]) -> "GlobalStats":
        documents, total, df = 0, 0.0, {}
        for part in parts:
            documents += part.documents
            total += part.total_length
            for term, count in part.df.items():
                df[term] = df.get(term, 0) + count
        return cls(documents, total, robertson_mean_idf(df, documents), df)


@dataclass(frozen=True)
class ShardStats:
    """One shard's contribution to the global statistics (what it sends the coordinator)."""

    documents: int
    total_length: float
    df: dict[str, int]

    @classmethod
    def of(cls, snapshot: Snapshot) -> "ShardStats":
        documents, total, df = 0, 0.0, {}
        for segment, live in zip(snapshot.segments, snapshot.live):
            n, length = segment.sparse.length_stats(live)
            documents += n
            total += length
            for term, count in segment.sparse.all_document_frequencies(live).items():
                df[term] = df.get(term, 0) + count
        return cls(documents, total, df)


@dataclass
class ShardedManifest:
    """One sharded generation: the generation of each shard, counts, and the global statistics."""

    generation: int
    shards: list[int]  # generation number per shard (0: the shard has none yet)
    segments: list[int] = field(default_factory=list)  # segments per shard: how rows are addressed
    documents: int = 0
    chunks: int = 0
    created_at: float = 0.0
    stats: GlobalStats = field(default_factory=GlobalStats)
    fusion: dict | None = None  # calibrated on the whole sharded collection at commit (indexes.calibration)
    embedders: list[EmbedderShare] = field(default_factory=list)  # the shards' shares added up (none: unknown)

    @classmethod
    def from_json(cls, text: str) -> "ShardedManifest":
        raw = json.loads(text)
        raw["stats"] = GlobalStats(**raw["stats"])
        raw["embedders"] = [EmbedderShare(**e) for e in raw.get("embedders") or []]
        return cls(**raw)


def read_sharded(folder: Path) -> ShardedManifest | None:
    """The committed sharded generation, or None before the first commit."""
    generation = current_generation(folder)
    if generation is None:
        return None
    return ShardedManifest.from_json((generation_folder(folder, generation) / "manifest.json").read_text("utf-8"))


def commit_sharded(folder: Path, manifest: ShardedManifest, keep: int) -> None:
    """Publish the sharded generation and move the top-level CURRENT (the one atomic step), then
    drop top-level generations beyond the newest `keep` (shards collect their own garbage)."""
    commit_generation(folder, manifest, {})  # type: ignore[arg-type]  # any dataclass with generation, created_at
    current = manifest.generation
    published = [g for g in list_generations(folder) if g <= current]
    for number in list_generations(folder):
        if number not in published[-keep:]:
            shutil.rmtree(generation_folder(folder, number), ignore_errors=True)
    for path in (folder / "generations").glob(".tmp-*"):  # left by a writer killed mid-commit
        shutil.rmtree(path, ignore_errors=True)
