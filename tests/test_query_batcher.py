"""Concurrent query embeddings are batched, each caller gets its own row, and errors reach callers."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from indexes.query_batcher import QueryBatcher


class SlowEmbedder:
    dim, model_dir = 2, "fake"

    def __init__(self) -> None:
        self.batches: list[int] = []

    def encode(self, texts, progress=None):
        self.batches.append(len(texts))
        time.sleep(0.05)
        if "boom" in texts:
            raise RuntimeError("model failed")
        return np.asarray([[len(t), 1.0] for t in texts], dtype=np.float32)


def test_concurrent_queries_share_batches_and_get_their_own_vectors():
    embedder = SlowEmbedder()
    batcher = QueryBatcher(embedder)
    texts = ["a" * i for i in range(1, 17)]
    with ThreadPoolExecutor(16) as pool:
        vectors = list(pool.map(batcher.embed, texts))
    assert [v[0] for v in vectors] == [len(t) for t in texts]
    assert sum(embedder.batches) == 16 and len(embedder.batches) < 16  # some queries rode together


def test_errors_reach_every_caller_and_the_batcher_keeps_working():
    batcher = QueryBatcher(SlowEmbedder())
    with pytest.raises(RuntimeError, match="model failed"):
        batcher.embed("boom")
    assert batcher.embed("ok")[0] == 2
