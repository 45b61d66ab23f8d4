"""Long-lived service state: settings, collections, retrievers, keys, cards, jobs and rate limits."""
from __future__ import annotations

import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from api.db import make_sessions, open_database
from api.keys import KeyStore, Principal
from api.settings import ServiceSettings
from experts.fusion.cards import use_registry
from experts.registry import CardRegistry
from indexes.collection import Collection, CollectionBroken, Home
from indexes.embedder_check import EmbedderIncompatible
from indexes.names import InvalidCollectionName
from rag import cascade_spec
from rag.pipeline import AnswerPipeline
from rag.retriever import Retriever


@dataclass
class Job:
    id: str
    collection: str
    kind: str
    owner: str = ""  # the identity of the key that started it: only it (and admins) may read it
    status: str = "queued"  # queued | running | succeeded | failed
    created_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    result: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


_KEEP_JOBS = 1000  # finished jobs remembered for status queries (per process)
log = logging.getLogger("mighty")


class RateLimiter:
    """Token bucket per key: `per_minute` requests, refilled continuously."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> float:
        """0 when allowed, else seconds until the next request would be."""
        if self.per_minute <= 0:
            return 0.0
        now = time.monotonic()
        rate = self.per_minute / 60.0
        with self._lock:
            tokens, last = self._buckets.get(key, (float(self.per_minute), now))
            tokens = min(float(self.per_minute), tokens + (now - last) * rate)
            if tokens < 1:
                self._buckets[key] = (tokens, now)
                return (1 - tokens) / rate
            self._buckets[key] = (tokens - 1, now)
            return 0.0


def runs_locally(model: str) -> bool:
    """In-process CPU models, which get smaller context and answer budgets than hosted ones. A cascade
    with a local side gets them too: both sides see one prompt, and it must fit the local model."""
    if cascade_spec.is_cascade(model):
        try:
            spec = cascade_spec.parse(model)
        except cascade_spec.CascadeSpecError:
            return False  # refused with its reason by rag.llm.check_model
        return runs_locally(spec.small) or runs_locally(spec.large)
    return model.startswith(("local/", "fusion:", "fusion/"))


class Backend:
    """Where a collection's searches and the local models run. This default runs everything in the
    server process; `mighty serve --ray` passes one that sends shard searches, query embedding and
    local-model decoding to Ray Serve deployments (`api.ray_serve`), so nothing here imports Ray."""

    def collection(self, collection: Collection) -> Collection:
        return collection

    def retriever(self, collection: Collection) -> Retriever:
        return Retriever(collection)

    def models(self) -> Any:
        """The host fused generation runs on (`api.local_models.InProcessModels` or its Serve twin)."""
        from api.local_models import InProcessModels

        return InProcessModels()

    def llm_providers(self) -> dict[str, Callable[[], object]]:
        """LiteLLM providers to use instead of the in-process ones, by model prefix (`rag.llm.add_provider`)."""
        return {}


class ServiceState:
    def __init__(self, settings: ServiceSettings, backend: Backend | None = None) -> None:
        self.settings = settings
        self.backend = backend or Backend()
        self.home = Home(settings.home)
        self.engine = open_database(settings.resolved_database_url())
        self.keys = KeyStore(make_sessions(self.engine))
        self.cards = CardRegistry(self.engine, settings.cards_dir)
        use_registry(self.cards)  # fusion: models name registered cards
        self.limiter = RateLimiter(settings.rate_limit_per_minute)
        self.jobs: dict[str, Job] = {}
        self.executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="mighty-index")
        self._retrievers: dict[str, Retriever] = {}
        self.unhealthy: dict[str, str] = {}  # collection -> why it could not be loaded (see warm_up)
        self._lock = threading.Lock()

    def collection(self, name: str) -> Collection:
        return self.backend.collection(self.home.open(name))

    def retriever(self, name: str) -> Retriever:
        collection = self.collection(name)
        with self._lock:
            retriever = self._retrievers.get(name)
            if retriever is None or retriever.collection is not collection:
                retriever = self._retrievers[name] = self.backend.retriever(collection)
            return retriever

    def warm_up(self) -> None:
        """Load embedders and compile the BM25 kernels before the first request, not during it.

        One broken collection (unreadable files, an embedder no longer allowed) must not stop the
        server: it is logged, reported by /healthz, answers 503 with the reason, and can be dropped."""
        from rag.schemas import RetrievalRequest

        for name in self.home.names():
            try:
                _ = self.collection(name).embedder
                try:
                    self.retriever(name).search(RetrievalRequest(query="warm up", top_k=1))
                except EmbedderIncompatible as exc:  # BM25 still serves: a warning, not an unhealthy collection
                    log.warning("%s", exc)
                    self.retriever(name).search(RetrievalRequest(query="warm up", top_k=1, mode="bm25"))
            except Exception as exc:  # noqa: BLE001 - any failure is this collection's, not the server's
                known = isinstance(exc, (CollectionBroken, InvalidCollectionName))  # messages without paths
                self.unhealthy[name] = str(exc) if known else type(exc).__name__
                log.error("collection %r is unavailable: %s", name, self.unhealthy[name], exc_info=not known)

    def pipeline(self, name: str, model: str) -> AnswerPipeline:
        if runs_locally(model):
            return AnswerPipeline(self.retriever(name), self.settings.local_context_tokens,
                                  self.settings.local_min_source_score)
        return AnswerPipeline(self.retriever(name), self.settings.context_tokens)

    def forget(self, name: str) -> None:
        with self._lock:
            self._retrievers.pop(name, None)
            self.unhealthy.pop(name, None)

    def submit(self, collection: str, kind: str, work, owner: Principal | None = None) -> Job:
        job = Job(uuid.uuid4().hex, collection, kind, owner.identity if owner else "")
        self.jobs[job.id] = job
        finished = [j for j in self.jobs.values() if j.finished_at is not None]
        for old in sorted(finished, key=lambda j: j.finished_at)[:max(0, len(finished) - _KEEP_JOBS)]:
            self.jobs.pop(old.id, None)

        def run() -> None:
            job.status = "running"
            try:
                job.result = work()
                job.status = "succeeded"
            except Exception as exc:  # noqa: BLE001 - reported to the client through the job
                job.status, job.error = "failed", f"{type(exc).__name__}: {exc}"
            finally:
                job.finished_at = time.time()

        self.executor.submit(run)
        return job

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=False)
        self.engine.dispose()
