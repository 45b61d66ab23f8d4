"""Sparse, dense and hybrid retrieval over one collection snapshot, with provenance per hit."""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from indexes.calibration import query_weight
from indexes.collection import Collection
from indexes.documents import Chunk
from indexes.query_batcher import QueryBatcher
from indexes.snapshot import ScoredRow, Snapshot
from indexes.fusion import FusionParams, fuse, min_max, reciprocal_rank_fusion
from rag.schemas import Hit, RetrievalRequest, RetrievalResult, RetrieverRank, ShardReport

_QUERY_CACHE = 1024


class Retriever:
    """Answers `RetrievalRequest`s for one collection; thread-safe, shareable across requests."""

    def __init__(self, collection: Collection) -> None:
        self.collection = collection
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._query_batcher: QueryBatcher | None = None

    def embed_query(self, query: str) -> np.ndarray:
        return self._embed_later(query)()

    def _embed_later(self, query: str) -> Callable[[], np.ndarray]:
        """Start embedding `query` (unless cached) and return what waits for, caches and returns it.
        A subclass that replaces `embed_query` (tests, custom vectors) is called as it is, in order."""
        if type(self).embed_query is not Retriever.embed_query:
            return lambda: self.embed_query(query)
        with self._lock:
            if query in self._vectors:
                self._vectors.move_to_end(query)
                cached = self._vectors[query]
                return lambda: cached
        future = self._batcher().submit(query)
        return lambda: self._remember(query, future.result())

    def _remember(self, query: str, vector: np.ndarray) -> np.ndarray:
        with self._lock:
            self._vectors[query] = vector
            if len(self._vectors) > _QUERY_CACHE:
                self._vectors.popitem(last=False)
        return vector

    def _batcher(self) -> QueryBatcher:
        with self._lock:
            if self._query_batcher is None:
                self._query_batcher = QueryBatcher(self.collection.embedder)
            return self._query_batcher

    def search(self, request: RetrievalRequest) -> RetrievalResult:
        config = self.collection.config
        fusion = config.fusion
        candidates = max(request.candidates or fusion.candidates, request.top_k)
        snapshot = self.collection.snapshot()
        if request.mode in ("dense", "hybrid"):  # stored and query vectors must come from agreeing embedders
            self.collection.require_dense(snapshot)
        timings: dict[str, float] = {}
        lists: dict[str, list[ScoredRow]] = {}
        terms, term_weights, vector = [], np.zeros(0), None
        started = time.perf_counter()
        pending = self._embed_later(request.query) if request.mode in ("dense", "hybrid") else None
        submitted = _ms(started)
        # a sharded snapshot answers both lists in one round trip per shard; a local one runs BM25 while
        # the query is being embedded, so "embed" is only the wait left after BM25
        one_trip = request.mode == "hybrid" and getattr(snapshot, "fans_out", False)
        if request.mode == "bm25" or (request.mode == "hybrid" and not one_trip):
            started = time.perf_counter()
            terms, term_weights = snapshot.bm25_query(self.collection.analyzer, config.bm25, request.query)
            lists["bm25"] = snapshot.bm25_top_k(config.bm25, terms, term_weights, candidates, request.filters)
            timings["bm25"] = _ms(started)
        if pending is not None:
            started = time.perf_counter()
            vector = pending()
            timings["embed"] = submitted + _ms(started)
            started = time.perf_counter()
            if one_trip:
                terms, term_weights = snapshot.bm25_query(self.collection.analyzer, config.bm25, request.query)
                lists["bm25"], lists["dense"] = snapshot.hybrid_top_k(
                    config.bm25, terms, term_weights, vector, candidates, config.dense.ef_search, request.filters)
                timings["bm25+dense"] = _ms(started)
            else:
                lists["dense"] = snapshot.dense(vector, candidates, config.dense.ef_search, request.filters)
                timings["dense"] = _ms(started)
        started = time.perf_counter()
        pool, raw = snapshot.pooled(lists, config.bm25, terms, term_weights, vector)
        ranks = {name: _ranks(hits, pool) for name, hits in lists.items()}
        weights: dict[str, float] = {}
        dense = raw.get("dense")
        top = float(dense.max()) if dense is not None and len(dense) else None
        params = self._fusion_params(snapshot, request, top)
        if not pool:
            fused = np.zeros(0)
        elif request.mode != "hybrid":
            (name,) = lists
            fused = min_max(raw[name])
        elif (request.fusion or fusion.method) == "rrf":
            calibrated = self.collection.fusion_settings(snapshot)["source"] == "calibrated"
            fused = reciprocal_rank_fusion(ranks, fusion.rrf_k, params.weights() if calibrated else None)
        else:
            fused, weights = fuse(raw, params)
        order = np.argsort(-fused, kind="mergesort")[:request.top_k]
        chosen = [ScoredRow(*pool[i], float(fused[i])) for i in order]
        timings["fusion"] = _ms(started)
        started = time.perf_counter()
        chunks = snapshot.chunks(chosen)
        timings["fetch"] = _ms(started)
        hits = [_hit(chunk, float(fused[i]), {name: RetrieverRank(rank=int(ranks[name][i]) or None,
                                                                  score=float(raw[name][i]))
                                              for name in lists})
                for i, chunk in zip(order, chunks)]
        timings["total"] = sum(timings.values())
        return RetrievalResult(query=request.query, collection=self.collection.name, mode=request.mode,
                               generation=snapshot.generation, hits=hits, weights=weights, timings_ms=timings,
                               shards=_shard_report(snapshot))

    def _fusion_params(self, snapshot: Snapshot, request: RetrievalRequest, top: float | None) -> FusionParams:
        """The collection's calibrated settings (or its configured ones), with per-request overrides;
        a calibrated weight follows how well the embedder matches this query (`top`: its best dense
        score, see `indexes.calibration.query_weight`)."""
        settings = self.collection.fusion_settings(snapshot)
        params = FusionParams(query_weight(settings, top), settings["normalisation"], settings["adaptive"])
        if request.dense_weight is not None:
            params = replace(params, dense_weight=request.dense_weight)
        if request.adaptive is not None:
            params = replace(params, adaptive=request.adaptive)
        return params


def _shard_report(snapshot) -> ShardReport | None:
    """What a sharded collection's per-query snapshot recorded about which shards answered."""
    answers = getattr(snapshot, "answers", None)
    if answers is None:
        return None
    return ShardReport(shards=answers.shards, answered=answers.answered, missing=sorted(answers.missing),
                       partial=answers.partial)


def _ranks(hits: list[ScoredRow], pool: list[tuple[int, int]]) -> np.ndarray:
    position = {(h.segment, h.row): rank for rank, h in enumerate(hits, start=1)}
    return np.asarray([position.get(p, 0) for p in pool], dtype=np.int64)


def _hit(chunk: Chunk, score: float, found_by: dict[str, RetrieverRank]) -> Hit:
    return Hit(id=chunk.doc_id, chunk=chunk.chunk_index, title=chunk.title, text=chunk.text,
               span=(chunk.start, chunk.end), metadata=chunk.metadata, score=score, found_by=found_by)


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
