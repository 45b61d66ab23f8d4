"""Query serving over shards: searchers that answer with (chunk id, score) arrays, and a coordinator.

A `ShardSearcher` holds one shard's committed generation and scores with whatever collection-wide
statistics the coordinator passes in, so it never needs to know about other shards; it answers with
arrays (packed chunk ids and scores), never text, so a remote shard costs one small message per
call. Text is fetched only for the final top-k (query, then fetch).

`ShardedSnapshot` is the coordinator. It offers the methods of `indexes.snapshot.Snapshot` that the
retriever uses, so retrieval, fusion and everything above run unchanged over a sharded collection:
the BM25 weights come from the global statistics stored in the sharded generation, each retriever's
list is the merged top-k of every shard's top-k, and exact scores of pooled candidates are asked of
the shards that hold them. How calls reach shards (in-process, or Ray actors) is a `ShardFanout`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import copy

import numpy as np

from indexes.analyzer import Analyzer
from indexes.chunk_store import Filter
from indexes.config import BM25Config
from indexes.documents import Chunk
from indexes.generations import Manifest
from indexes.shards import ShardedManifest, ShardStats
from indexes.snapshot import ScoredRow, Snapshot, pool_scores, unit_length
from indexes.sparse import CollectionStats, query_weights

_ROW_BITS = 32
_ROW_MASK = (1 << _ROW_BITS) - 1

Scored = tuple[np.ndarray, np.ndarray]  # (int64 chunk ids, float64 scores), best first


def pack(segment: int | np.ndarray, row: int | np.ndarray) -> np.ndarray:
    """A chunk id within one shard's generation: segment position in the high bits, row in the low."""
    return (np.asarray(segment, dtype=np.int64) << _ROW_BITS) | np.asarray(row, dtype=np.int64)


def unpack(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids = np.asarray(ids, dtype=np.int64)
    return ids >> _ROW_BITS, ids & _ROW_MASK


class ShardSearcher:
    """One shard's committed generation; every score uses the statistics it is given."""

    def __init__(self, snapshot: Snapshot, bm25: BM25Config) -> None:
        self.snapshot, self.config = snapshot, bm25

    def describe(self) -> tuple[int, int]:
        """(generation, number of segments): how the coordinator addresses this shard's rows."""
        return self.snapshot.generation, len(self.snapshot.segments)

    def stats(self) -> ShardStats:
        return ShardStats.of(self.snapshot)

    def warm(self) -> None:
        """Run one hybrid search and one text fetch on this shard. Why: the first search of a freshly
        opened shard pays for lazy work (index files paged in, FAISS and the BM25 code run for the
        first time), seconds on a busy node; a replica that has not done it yet would miss the
        coordinator's per-shard deadline and be reported missing although it is up."""
        segments = [segment for segment in self.snapshot.segments if len(segment.dense.vectors)]
        if not segments:
            return
        vector = np.zeros(segments[0].dense.vectors.shape[1], dtype=np.float32)
        vector[0] = 1.0
        stats = self.snapshot.bm25_stats(self.config)
        found = self.hybrid(["the"], np.ones(1), stats, vector, 1, 16, None)
        self.chunks(found[3][:1])

    def bm25(self, terms: list[str], weights: np.ndarray, k: int, stats: CollectionStats,
             where: Filter | None) -> Scored:
        return _arrays(self.snapshot.bm25_top_k(self.config, terms, weights, k, where, stats))

    def dense(self, vector: np.ndarray, k: int, ef_search: int, where: Filter | None) -> Scored:
        return _arrays(self.snapshot.dense(vector, k, ef_search, where))

    def hybrid(self, terms: list[str], weights: np.ndarray, stats: CollectionStats, vector: np.ndarray, k: int,
               ef_search: int, where: Filter | None) -> tuple:
        """Both top-k lists and each list's scores under the other retriever, in one round trip: all a
        hybrid query asks of a shard before fetching text (the pool's exact scores come from the shard
        that holds each candidate)."""
        bm25_ids, bm25_scores = self.bm25(terms, weights, k, stats, where)
        dense_ids, dense_scores = self.dense(vector, k, ef_search, where)
        return (bm25_ids, bm25_scores, self.dense_of(vector, bm25_ids),
                dense_ids, dense_scores, self.bm25_of(terms, weights, dense_ids, stats))

    def bm25_of(self, terms: list[str], weights: np.ndarray, ids: np.ndarray, stats: CollectionStats) -> np.ndarray:
        return self.snapshot.bm25_of(self.config, terms, weights, _pairs(ids), stats)

    def dense_of(self, vector: np.ndarray, ids: np.ndarray) -> np.ndarray:
        return self.snapshot.dense_of(vector, _pairs(ids))

    def chunks(self, ids: np.ndarray) -> list[Chunk]:
        return self.snapshot.chunks([ScoredRow(s, r, 0.0) for s, r in _pairs(ids)])

    def vector_sum(self) -> np.ndarray | None:
        return self.snapshot.vector_sum()

    def size_on_disk(self) -> int:
        return self.snapshot.size_on_disk()


class ShardFanout(Protocol):
    """Calls one method on several shards. Returns the results of the shards that answered; a shard
    that did not is left out (and recorded by the fan-out), never answered for."""

    def call(self, method: str, calls: dict[int, tuple]) -> dict[int, Any]: ...


class LocalFanout:
    """Every shard in this process: plain method calls, so every shard always answers."""

    def __init__(self, searchers: list[ShardSearcher]) -> None:
        self.searchers = searchers

    def call(self, method: str, calls: dict[int, tuple]) -> dict[int, Any]:
        return {shard: getattr(self.searchers[shard], method)(*args) for shard, args in calls.items()}


@dataclass
class ShardAnswers:
    """Which shards answered a query: `missing` non-empty means the result is partial."""

    shards: int
    missing: set[int] = field(default_factory=set)

    @property
    def answered(self) -> list[int]:
        return [s for s in range(self.shards) if s not in self.missing]

    @property
    def partial(self) -> bool:
        return bool(self.missing)


class ShardedSnapshot:
    """The coordinator over one sharded generation; read-only, shareable between threads.

    Rows are addressed as in a `Snapshot`, by (segment, row), where segment positions run through
    shard 0's segments, then shard 1's, and so on (`offsets`)."""

    fans_out = True  # every call is a round trip to each shard: the retriever asks for both lists at once

    def __init__(self, sharded: ShardedManifest, fanout: ShardFanout, segment_counts: list[int],
                 local: list[Snapshot] | None = None, policy: str = "flag") -> None:
        self.sharded, self.fanout, self.policy = sharded, fanout, policy
        self.answers: ShardAnswers | None = None
        self._query: _QueryState | None = None  # per-query views only: scores already fetched
        self.offsets = np.concatenate([[0], np.cumsum(segment_counts)]).astype(np.int64)
        self.stats = sharded.stats.collection_stats()
        self._local = local
        refs = [ref for snapshot in local or [] for ref in snapshot.manifest.segments]
        self.manifest = Manifest(sharded.generation, refs, sharded.documents, sharded.chunks, sharded.created_at,
                                 sharded.fusion, list(sharded.embedders))

    @property
    def generation(self) -> int:
        return self.sharded.generation

    def for_query(self) -> "ShardedSnapshot":
        """A view of this snapshot that records which shards answer one query (`answers`). With
        policy "refuse", a shard that does not answer fails the query (`ShardUnavailable`) instead."""
        view = copy.copy(self)
        view.answers = ShardAnswers(self.shards)
        view._query = _QueryState()
        return view

    @property
    def shards(self) -> int:
        return len(self.offsets) - 1

    # in-process shards only: the segment-level view that whole-collection readers (training corpora) walk
    @property
    def segments(self) -> list:
        return [segment for snapshot in self._require_local() for segment in snapshot.segments]

    @property
    def live(self) -> list:
        return [mask for snapshot in self._require_local() for mask in snapshot.live]

    def _require_local(self) -> list[Snapshot]:
        if self._local is None:
            raise RuntimeError("the segments of remote shards cannot be walked from the coordinator")
        return self._local

    # -- BM25 with global statistics ---------------------------------------------------------
    def bm25_stats(self, config: BM25Config) -> CollectionStats:
        return self.stats

    def bm25_query(self, analyzer: Analyzer, config: BM25Config, query: str) -> tuple[list[str], np.ndarray]:
        """Query terms weighted with collection-wide idf: no shard is asked (the dfs phase ran at commit)."""
        terms = analyzer.terms(query)
        if not terms or not self.sharded.stats.documents:
            return [], np.zeros(0)
        unique = list(dict.fromkeys(terms))
        return query_weights(config, self.stats, terms, self.sharded.stats.frequencies(unique))

    def bm25_top_k(self, config: BM25Config, unique: list[str], weights: np.ndarray, k: int,
                   where: Filter | None = None) -> list[ScoredRow]:
        if not unique:
            return []
        calls = {shard: (unique, weights, k, self.stats, where) for shard in range(self.shards)}
        hits = self._merge(self._call("bm25", calls), k)
        if self._query is not None:
            self._query.terms, self._query.weights = unique, weights
        return hits

    def bm25(self, analyzer: Analyzer, config: BM25Config, query: str, k: int,
             where: Filter | None = None) -> list[ScoredRow]:
        terms, weights = self.bm25_query(analyzer, config, query)
        return self.bm25_top_k(config, terms, weights, k, where)

    def dense(self, vector: np.ndarray, k: int, ef_search: int, where: Filter | None = None) -> list[ScoredRow]:
        calls = {shard: (vector, k, ef_search, where) for shard in range(self.shards)}
        return self._merge(self._call("dense", calls), k)

    def hybrid_top_k(self, config: BM25Config, terms: list[str], weights: np.ndarray, vector: np.ndarray, k: int,
                     ef_search: int, where: Filter | None = None) -> tuple[list[ScoredRow], list[ScoredRow]]:
        """The BM25 and dense top-k of a hybrid query with one call per shard (every shard at once),
        which also brings the cross scores the pool needs, so only the text fetch remains."""
        if not terms:
            return [], self.dense(vector, k, ef_search, where)
        calls = {shard: (terms, weights, self.stats, vector, k, ef_search, where) for shard in range(self.shards)}
        results = self._call("hybrid", calls)
        bm25 = self._merge({shard: result[:2] for shard, result in results.items()}, k)
        dense = self._merge({shard: result[3:5] for shard, result in results.items()}, k)
        query = self._query
        if query is not None:
            query.terms, query.weights, query.vector = terms, weights, vector
            for shard, (bm25_ids, _, dense_of_bm25, dense_ids, _, bm25_of_dense) in results.items():
                query.dense.update(zip(self._global(shard, bm25_ids), dense_of_bm25.tolist()))
                query.bm25.update(zip(self._global(shard, dense_ids), bm25_of_dense.tolist()))
        return bm25, dense

    def bm25_of(self, config: BM25Config, terms: list[str], weights: np.ndarray,
                pairs: list[tuple[int, int]]) -> np.ndarray:
        query = self._query
        if query is not None and terms == query.terms and all(p in query.bm25 for p in pairs):
            return np.asarray([query.bm25[p] for p in pairs], dtype=np.float64)
        return self._scatter("bm25_of", pairs, lambda ids: (terms, weights, ids, self.stats))

    def dense_of(self, vector: np.ndarray, pairs: list[tuple[int, int]]) -> np.ndarray:
        query = self._query
        if query is not None and query.vector is vector and all(p in query.dense for p in pairs):
            return np.asarray([query.dense[p] for p in pairs], dtype=np.float64)
        return self._scatter("dense_of", pairs, lambda ids: (vector, ids))

    def pooled(self, lists: dict[str, list[ScoredRow]], config: BM25Config, terms: list[str],
               weights: np.ndarray, vector: np.ndarray | None,
               pool: list[tuple[int, int]] | None = None) -> tuple[list[tuple[int, int]], dict[str, np.ndarray]]:
        return pool_scores(self, lists, config, terms, weights, vector, pool)

    def chunks(self, hits: list[ScoredRow]) -> list[Chunk]:
        groups = self._group([(h.segment, h.row) for h in hits])
        found = self._call("chunks", {shard: (ids,) for shard, (_, ids) in groups.items()})
        out: list[Chunk | None] = [None] * len(hits)
        for shard, (positions, _) in groups.items():
            if shard not in found:
                raise ShardUnavailable(f"shard {shard} did not answer while its chunks were fetched")
            for position, chunk in zip(positions, found[shard]):
                out[position] = chunk
        return out  # type: ignore[return-value]

    def centroid(self) -> np.ndarray | None:
        sums = [s for s in self._call("vector_sum", {i: () for i in range(self.shards)}).values() if s is not None]
        return unit_length(np.sum(sums, axis=0)) if sums else None

    def size_on_disk(self) -> int:
        return sum(self._call("size_on_disk", {i: () for i in range(self.shards)}).values())

    # -- addressing --------------------------------------------------------------------------
    def _call(self, method: str, calls: dict[int, tuple]) -> dict[int, Any]:
        if self.answers is not None and self.answers.missing:  # a shard lost earlier in this query
            calls = {shard: args for shard, args in calls.items() if shard not in self.answers.missing}
        results = self.fanout.call(method, calls)
        missing = set(calls) - set(results)
        if missing and self.policy == "refuse":
            raise ShardUnavailable(f"shard(s) {sorted(missing)} did not answer; partial results are refused")
        if self.answers is not None:
            self.answers.missing.update(missing)
        return results

    def _merge(self, results: dict[int, Scored], k: int) -> list[ScoredRow]:
        """The best k of every shard's hits (ties in shard order), merged as arrays: only the k kept
        become `ScoredRow`s."""
        shards = [shard for shard in sorted(results) if len(results[shard][0])]
        if not shards:
            return []
        ids = np.concatenate([np.asarray(results[s][0], dtype=np.int64) for s in shards])
        scores = np.concatenate([np.asarray(results[s][1], dtype=np.float64) for s in shards])
        offsets = np.concatenate([np.full(len(results[s][0]), self.offsets[s], dtype=np.int64) for s in shards])
        best = np.argsort(-scores, kind="stable")[:k]
        segments, rows = unpack(ids[best])
        return [ScoredRow(segment, row, score) for segment, row, score
                in zip((segments + offsets[best]).tolist(), rows.tolist(), scores[best].tolist())]

    def _global(self, shard: int, ids: np.ndarray) -> list[tuple[int, int]]:
        segments, rows = unpack(ids)
        return list(zip((segments + self.offsets[shard]).tolist(), rows.tolist()))

    def _group(self, pairs: list[tuple[int, int]]) -> dict[int, tuple[list[int], np.ndarray]]:
        """shard -> (positions in `pairs`, that shard's chunk ids)."""
        if not pairs:
            return {}
        segments = np.asarray([p[0] for p in pairs], dtype=np.int64)
        rows = np.asarray([p[1] for p in pairs], dtype=np.int64)
        shard_of_pair = np.searchsorted(self.offsets, segments, side="right") - 1
        groups = {}
        for shard in np.unique(shard_of_pair):
            chosen = np.flatnonzero(shard_of_pair == shard)
            groups[int(shard)] = (chosen.tolist(), pack(segments[chosen] - self.offsets[shard], rows[chosen]))
        return groups

    def _scatter(self, method: str, pairs: list[tuple[int, int]], args) -> np.ndarray:
        out = np.zeros(len(pairs), dtype=np.float64)
        groups = self._group(pairs)
        found = self._call(method, {shard: args(ids) for shard, (_, ids) in groups.items()})
        for shard, (positions, _) in groups.items():
            if shard not in found:
                raise ShardUnavailable(f"shard {shard} did not answer while candidates were scored")
            out[positions] = found[shard]
        return out


@dataclass
class _QueryState:
    """What one query's hybrid search has already learnt from the shards."""

    terms: list[str] | None = None
    weights: np.ndarray | None = None
    vector: np.ndarray | None = None
    bm25: dict[tuple[int, int], float] = field(default_factory=dict)  # exact BM25 of dense hits
    dense: dict[tuple[int, int], float] = field(default_factory=dict)  # inner products of BM25 hits


class ShardUnavailable(RuntimeError):
    """A shard that answered the first phase of a query did not answer the second."""


def _arrays(hits: list[ScoredRow]) -> Scored:
    return (pack([h.segment for h in hits], [h.row for h in hits]),
            np.asarray([h.score for h in hits], dtype=np.float64))


def _pairs(ids: np.ndarray) -> list[tuple[int, int]]:
    segments, rows = unpack(ids)
    return list(zip(segments.tolist(), rows.tolist()))
