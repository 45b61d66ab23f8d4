"""Opportunistic batching of query embeddings across concurrent requests.

One thread owns the embedder for queries. When it is idle a query is embedded at once (no added
wait); while it is busy, queries that arrive queue up and are embedded together in the next batch.
Under load this turns N single-row forward passes into one N-row pass, which on a small CPU is
most of the cost of a retrieval request.
"""
from __future__ import annotations

import queue
import threading
from concurrent.futures import Future

import numpy as np

from indexes.embedders import Embedder, encode_queries


class QueryBatcher:
    def __init__(self, embedder: Embedder, max_batch: int = 32) -> None:
        self._embedder = embedder
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[tuple[str, Future]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="mighty-query-embedder", daemon=True)
        self._thread.start()

    def embed(self, text: str) -> np.ndarray:
        return self.submit(text).result()

    def submit(self, text: str) -> Future:
        """Queue a query and return at once: a hybrid search scores BM25 while this thread embeds
        (onnxruntime releases the GIL), so the embedding adds to latency only where it is longer."""
        future: Future = Future()
        self._queue.put((text, future))
        return future

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < self._max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                vectors = encode_queries(self._embedder, [text for text, _ in batch])
            except Exception as exc:  # noqa: BLE001 - handed to every waiting caller
                for _, future in batch:
                    future.set_exception(exc)
                continue
            for (_, future), vector in zip(batch, vectors):
                future.set_result(vector)
