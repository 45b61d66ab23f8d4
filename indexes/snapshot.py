"""The read side: one committed generation, searched by many threads without locks.

A snapshot never changes after it is loaded; a newer generation becomes a new snapshot, and
searches already under way finish on the one they started with.
"""
from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indexes.analyzer import Analyzer
from indexes.chunk_store import Filter
from indexes.config import BM25Config
from indexes.documents import Chunk
from indexes.generations import Manifest
from indexes.segment import Segment
from indexes.sparse import CollectionStats, gather_stats, query_weights

_FILTER_CACHE_SIZE = 64


@dataclass(frozen=True)
class ScoredRow:
    segment: int  # position in the snapshot's segment list
    row: int
    score: float


class Snapshot:
    fans_out = False  # local segments: BM25 runs while the query is embedded (see rag.retriever)

    def __init__(self, folder: Path, manifest: Manifest, segments: list[Segment],
                 deletes: dict[str, np.ndarray]) -> None:
        self.folder, self.manifest, self.segments = folder, manifest, segments
        self.live: list[np.ndarray | None] = []
        for segment in segments:
            rows = deletes.get(segment.id)
            if rows is None or len(rows) == 0:
                self.live.append(None)
            else:
                mask = np.ones(segment.rows, dtype=np.uint8)
                mask[rows] = 0
                self.live.append(mask)
        self._stats: dict[str, CollectionStats] = {}
        self._filters: OrderedDict[str, list[np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def generation(self) -> int:
        return self.manifest.generation

    def bm25_stats(self, config: BM25Config) -> CollectionStats:
        key = config.idf
        with self._lock:
            if key not in self._stats:
                self._stats[key] = gather_stats(config, [(s.sparse, m) for s, m in zip(self.segments, self.live)])
            return self._stats[key]

    def masks(self, where: Filter | None) -> list[np.ndarray | None]:
        """Per segment: None (every row allowed) or a uint8 mask of live rows matching `where`."""
        if not where:
            return self.live
        key = json.dumps(where, sort_keys=True)
        with self._lock:
            cached = self._filters.get(key)
            if cached is not None:
                self._filters.move_to_end(key)
                return cached
        masks = []
        for segment, live in zip(self.segments, self.live):
            mask = segment.store.matching_rows(where, segment.rows)
            masks.append(mask if live is None else mask & live)
        with self._lock:
            self._filters[key] = masks
            while len(self._filters) > _FILTER_CACHE_SIZE:
                self._filters.popitem(last=False)
        return masks

    def bm25_query(self, analyzer: Analyzer, config: BM25Config, query: str) -> tuple[list[str], np.ndarray]:
        """Unique query terms and their global weights (idf x count in the query)."""
        terms = analyzer.terms(query)
        if not terms or not self.segments:
            return [], np.zeros(0)
        stats = self.bm25_stats(config)
        unique = list(dict.fromkeys(terms))
        df = np.zeros(len(unique), dtype=np.int64)
        for segment, live in zip(self.segments, self.live):
            df += segment.sparse.document_frequencies(unique, live)
        return query_weights(config, stats, terms, df)

    def bm25(self, analyzer: Analyzer, config: BM25Config, query: str, k: int,
             where: Filter | None = None) -> list[ScoredRow]:
        terms, weights = self.bm25_query(analyzer, config, query)
        return self.bm25_top_k(config, terms, weights, k, where)

    def bm25_top_k(self, config: BM25Config, unique: list[str], weights: np.ndarray, k: int,
                   where: Filter | None = None, stats: CollectionStats | None = None) -> list[ScoredRow]:
        """`stats`: collection-wide statistics from a shard coordinator (default: this snapshot's own)."""
        if not unique:
            return []
        stats = stats or self.bm25_stats(config)
        hits: list[ScoredRow] = []
        for position, (segment, mask) in enumerate(zip(self.segments, self.masks(where))):
            rows, scores = segment.sparse.top_k(unique, weights, k, config.k1, config.b, stats.avgdl, mask)
            hits.extend(ScoredRow(position, int(r), float(s)) for r, s in zip(rows, scores))
        return _best(hits, k)

    def dense(self, vector: np.ndarray, k: int, ef_search: int, where: Filter | None = None) -> list[ScoredRow]:
        hits: list[ScoredRow] = []
        for position, (segment, mask) in enumerate(zip(self.segments, self.masks(where))):
            rows, scores = segment.dense.top_k(vector, k, mask, ef_search)
            hits.extend(ScoredRow(position, int(r), float(s)) for r, s in zip(rows, scores))
        return _best(hits, k)

    def hybrid_top_k(self, config: BM25Config, terms: list[str], weights: np.ndarray, vector: np.ndarray, k: int,
                     ef_search: int, where: Filter | None = None) -> tuple[list[ScoredRow], list[ScoredRow]]:
        """The BM25 and dense top-k of a hybrid query (a shard coordinator gets both in one round trip)."""
        return self.bm25_top_k(config, terms, weights, k, where), self.dense(vector, k, ef_search, where)

    def bm25_of(self, config: BM25Config, terms: list[str], weights: np.ndarray,
                pairs: list[tuple[int, int]], stats: CollectionStats | None = None) -> np.ndarray:
        """Exact BM25 scores of (segment, row) pairs (`stats` as in `bm25_top_k`)."""
        stats = stats or self.bm25_stats(config)
        return self._per_segment(pairs, lambda seg, rows: seg.sparse.score_rows(
            terms, weights, rows, config.k1, config.b, stats.avgdl))

    def dense_of(self, vector: np.ndarray, pairs: list[tuple[int, int]]) -> np.ndarray:
        """Exact inner products of (segment, row) pairs with the query vector."""
        return self._per_segment(pairs, lambda seg, rows: seg.dense.vectors[rows] @ vector)

    def pooled(self, lists: dict[str, list[ScoredRow]], config: BM25Config, terms: list[str],
               weights: np.ndarray, vector: np.ndarray | None,
               pool: list[tuple[int, int]] | None = None) -> tuple[list[tuple[int, int]], dict[str, np.ndarray]]:
        return pool_scores(self, lists, config, terms, weights, vector, pool)

    def _per_segment(self, pairs, score) -> np.ndarray:
        out = np.zeros(len(pairs), dtype=np.float64)
        if not pairs:
            return out
        positions = np.asarray([p[0] for p in pairs])
        rows = np.asarray([p[1] for p in pairs], dtype=np.int64)
        for position in np.unique(positions):
            chosen = np.flatnonzero(positions == position)
            order = np.argsort(rows[chosen])
            chosen = chosen[order]
            out[chosen] = score(self.segments[int(position)], rows[chosen])
        return out

    def centroid(self) -> np.ndarray | None:
        """The unit-length mean of the live chunk vectors: where the collection sits in embedding space."""
        return unit_length(self.vector_sum())

    def vector_sum(self) -> np.ndarray | None:
        """The sum of the live chunk vectors (None when there are none); shards' sums add up."""
        total = None
        for segment, live in zip(self.segments, self.live):
            vectors = segment.dense.vectors if live is None else segment.dense.vectors[live.astype(bool)]
            if len(vectors):
                part = vectors.sum(axis=0, dtype=np.float64)
                total = part if total is None else total + part
        return total

    def chunks(self, hits: list[ScoredRow]) -> list[Chunk]:
        by_segment: dict[int, list[int]] = {}
        for hit in hits:
            by_segment.setdefault(hit.segment, []).append(hit.row)
        found = {pos: self.segments[pos].store.chunks(rows) for pos, rows in by_segment.items()}
        return [found[h.segment][h.row] for h in hits]

    def size_on_disk(self) -> int:
        return sum(p.stat().st_size for s in self.segments for p in s.folder.iterdir() if p.is_file())


def unit_length(total: np.ndarray | None) -> np.ndarray | None:
    if total is None:
        return None
    norm = np.linalg.norm(total)
    return (total / norm).astype(np.float32) if norm > 0 else None


def _best(hits: list[ScoredRow], k: int) -> list[ScoredRow]:
    hits.sort(key=lambda h: -h.score)
    return hits[:k]


def pool_scores(scorer, lists: dict[str, list[ScoredRow]], config: BM25Config, terms: list[str],
                weights: np.ndarray, vector: np.ndarray | None,
                pool: list[tuple[int, int]] | None = None) -> tuple[list[tuple[int, int]], dict[str, np.ndarray]]:
    """The union of several retrievers' candidates (or the given `pool`), and every retriever's
    exact score for every candidate: nothing is guessed for a row one retriever did not return.
    `scorer` is any snapshot with `bm25_of` and `dense_of` (a local one, or the shard coordinator)."""
    if pool is None:
        pool = list(dict.fromkeys((h.segment, h.row) for hits in lists.values() for h in hits))
    raw = {}
    for name, hits in lists.items():
        known = {(h.segment, h.row): h.score for h in hits}
        missing = [p for p in pool if p not in known]
        if missing:
            exact = (scorer.bm25_of(config, terms, weights, missing) if name == "bm25"
                     else scorer.dense_of(vector, missing))
            known.update(zip(missing, exact.tolist()))
        raw[name] = np.asarray([known[p] for p in pool], dtype=np.float64)
    return pool, raw
