"""The ingress replica's view of the Serve deployments: a collection backend and a shard fan-out.

Everything here runs inside the ingress replica, in the threads FastAPI runs retrieval in, so it
waits on deployment responses with blocking `.result()` calls (never on the event loop).
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np
from ray.exceptions import RayError
from ray.serve.exceptions import RayServeException

from api.ray_serve.models import ServeModels, serve_providers
from api.state import Backend
from indexes.collection import Collection, ShardedCollection
from indexes.ray_shards import RemoteShardedCollection
from rag.retriever import Retriever

log = logging.getLogger("mighty")


class ServeFanout:
    """Calls one shard deployment per shard, all at once, and keeps the answers that arrive in time;
    a shard whose replicas are gone (a lost node) or late is left out, so the query is flagged partial."""

    def __init__(self, handles: list, generations: list[int], timeout_s: float) -> None:
        self.handles, self.generations, self.timeout_s = handles, generations, timeout_s

    def call(self, method: str, calls: dict[int, tuple]) -> dict[int, Any]:
        responses = {shard: self.handles[shard].call.remote(self.generations[shard], method, args)
                     for shard, args in calls.items()}
        deadline = time.monotonic() + self.timeout_s
        results = {}
        for shard, response in responses.items():
            try:
                results[shard] = response.result(timeout_s=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                response.cancel()
            except (RayError, RayServeException) as exc:  # its replica died, is unavailable or overloaded
                log.warning("shard %d did not answer %s: %s", shard, method, type(exc).__name__)
        return results


class ServeShardedCollection(RemoteShardedCollection):
    """A sharded collection whose shards are searched by their Serve deployments."""

    def __init__(self, base: ShardedCollection, handles: list, timeout_s: float, policy: str) -> None:
        super().__init__(base, timeout_s, policy)
        self.handles = handles

    def fanout(self, generations: list[int]) -> ServeFanout:
        return ServeFanout(self.handles, generations, self.timeout_s)


class _EmbedderClient:
    """Stands in for the retriever's query batcher: one call to the embedder deployment per query."""

    def __init__(self, handle, collection: str) -> None:
        self.handle, self.collection = handle, collection

    def submit(self, query: str):
        """Start the call and return at once (its `.result()` waits): BM25 runs meanwhile, as locally."""
        return self.handle.embed.remote(self.collection, query)

    def embed(self, query: str) -> np.ndarray:
        return self.submit(query).result()


class ServeRetriever(Retriever):
    """A retriever whose query vectors come from the embedder deployment (cached as usual)."""

    def __init__(self, collection: Collection, embedder) -> None:
        super().__init__(collection)
        self._query_batcher = _EmbedderClient(embedder, collection.name)  # type: ignore[assignment]


class ServeBackend(Backend):
    """Sharded collections that have shard deployments search through them; the others (and
    collections created after start-up) are served in the ingress replica as without Ray. Local and
    fused models decode in the model deployment, never in the ingress."""

    def __init__(self, shards: dict[str, list], embedder, models, timeout_s: float, policy: str) -> None:
        self.shards, self.embedder, self.timeout_s, self.policy = shards, embedder, timeout_s, policy
        self._models = ServeModels(models)
        self._wrapped: dict[str, tuple[Collection, Collection]] = {}
        self._lock = threading.Lock()

    def models(self) -> ServeModels:
        return self._models

    def llm_providers(self) -> dict:
        return serve_providers(self._models)

    def collection(self, collection: Collection) -> Collection:
        handles = self.shards.get(collection.name)
        if not isinstance(collection, ShardedCollection) or handles is None or len(handles) != len(collection.shards):
            return collection
        with self._lock:  # one wrapper per opened collection, so retrievers are reused
            base, wrapped = self._wrapped.get(collection.name, (None, None))
            if base is not collection:
                wrapped = ServeShardedCollection(collection, handles, self.timeout_s, self.policy)
                self._wrapped[collection.name] = (collection, wrapped)
            return wrapped  # type: ignore[return-value]

    def retriever(self, collection: Collection) -> Retriever:
        return ServeRetriever(collection, self.embedder)
