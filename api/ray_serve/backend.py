"""The ingress replica's view of the Serve deployments: a collection backend, a shard fan-out and
the client of the model deployment.

Retrieval runs in the threads FastAPI runs it in, so shard calls wait on deployment responses with
blocking `.result()` calls (never on the event loop); model calls from the fusion routes are awaited
on the event loop, those from LiteLLM's providers block in LiteLLM's worker threads.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from ray.exceptions import RayError, RayTaskError
from ray.serve.exceptions import RayServeException

from api.local_models import FusionRule, ModelRef, ModelsUnavailable, PromptJob, fused_ref, local_ref
from api.state import Backend
from indexes.collection import Collection, ShardedCollection
from indexes.ray_shards import RemoteShardedCollection
from rag.litellm_provider import CustomLLMError, InProcessProvider
from rag.retriever import Retriever
from rag.runtime import Decoded, LocalModelError, SamplingOptions

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


@contextmanager
def _answers():
    """A replica's own error as itself (FusionError keeps its status), a replica that is gone or
    unreachable as ModelsUnavailable."""
    try:
        yield
    except RayTaskError as error:
        cause = getattr(error, "cause", None)
        if isinstance(cause, Exception) and not isinstance(cause, RayError):
            raise cause from None
        raise ModelsUnavailable(f"the model deployment failed the call ({type(cause or error).__name__}); "
                                "retry shortly") from None
    except (RayError, RayServeException) as error:
        raise ModelsUnavailable(f"no model replica could take the call ({type(error).__name__}); "
                                "retry shortly") from None


class ServeModels:
    """The ingress's model host on Serve: `InProcessModels`' calls, sent to the replica holding the model."""

    def __init__(self, handle) -> None:
        self.handle = handle

    def _to(self, ref: ModelRef, stream: bool = False):
        return self.handle.options(multiplexed_model_id=ref.id, stream=stream)

    async def prompt_result(self, ref: ModelRef, rule: FusionRule, job: PromptJob) -> dict:
        with _answers():
            return await self._to(ref).prompt_result.remote(ref, rule, job)

    async def prompt_events(self, ref: ModelRef, rule: FusionRule, job: PromptJob) -> AsyncIterator[dict]:
        events = self._to(ref, stream=True).prompt_events.remote(ref, rule, job)
        try:
            with _answers():
                async for event in events:
                    yield event
        finally:
            events.cancel()  # a client gone: the replica's generation stops after its current token

    async def chat(self, ref: ModelRef, rule: FusionRule, messages: list[dict], options: SamplingOptions,
                   timeout: float | None) -> Decoded:
        with _answers():
            return await self._to(ref).chat.remote(ref, rule, messages, options, timeout)

    async def chat_deltas(self, ref: ModelRef, rule: FusionRule, messages: list[dict], options: SamplingOptions,
                          timeout: float | None) -> AsyncIterator[str | Decoded]:
        deltas = self._to(ref, stream=True).chat_deltas.remote(ref, rule, messages, options, timeout)
        try:
            with _answers():
                async for delta in deltas:
                    yield delta
        finally:
            deltas.cancel()

    # blocking forms, for the LiteLLM providers (LiteLLM runs them in worker threads)
    def complete(self, ref: ModelRef, messages: list, options: SamplingOptions, timeout: float | None) -> Decoded:
        with _answers():
            return self._to(ref).chat.remote(ref, FusionRule(), messages, options, timeout).result()

    def deltas(self, ref: ModelRef, messages: list, options: SamplingOptions, timeout: float | None,
               cancel: threading.Event | None, results: list) -> Iterator[str]:
        stream = self._to(ref, stream=True).chat_deltas.remote(ref, FusionRule(), messages, options, timeout)
        try:
            with _answers():
                for item in stream:
                    if cancel is not None and cancel.is_set():
                        return
                    if isinstance(item, str):
                        if item:  # the first, empty delta only says the model is ready
                            yield item
                    else:
                        results.append(item)
        finally:
            stream.cancel()


class ServeProvider(InProcessProvider):
    """LiteLLM's `local/` or `fusion/` provider on the ingress: the model string is checked and the
    cards resolved here (the registry is the ingress's), the decoding is the model deployment's."""

    def __init__(self, provider: str, models: ServeModels) -> None:
        super().__init__()
        self.provider, self.models = provider, models

    def _ref(self, model: str) -> ModelRef:
        if self.provider == "local":
            return local_ref(model)
        from experts.fusion.service import FusionError, model_cards

        try:
            return fused_ref(*model_cards(f"fusion/{model}"))
        except FusionError as error:
            raise CustomLLMError(status_code=error.status, message=str(error)) from error

    @contextmanager
    def _errors(self):
        try:
            yield
        except LocalModelError as error:  # crossed from the replica: LiteLLM reports 404 as-is
            raise CustomLLMError(status_code=404, message=str(error)) from error
        except ModelsUnavailable as error:
            raise CustomLLMError(status_code=503, message=str(error)) from error

    def generate(self, model: str, messages: list, options: SamplingOptions, timeout: float | None) -> Decoded:
        with self._errors():
            return self.models.complete(self._ref(model), messages, options, timeout)

    def stream(self, model: str, messages: list, options: SamplingOptions, timeout: float | None,
               cancel: threading.Event | None, results: list[Decoded]) -> Iterator[str]:
        with self._errors():
            yield from self.models.deltas(self._ref(model), messages, options, timeout, cancel, results)


def serve_providers(models: ServeModels) -> dict:
    """`rag.llm` providers by prefix: `local/` and `fusion/` models decode in the model deployment."""
    handlers = {prefix: ServeProvider(prefix.rstrip("/"), models) for prefix in ("local/", "fusion/")}
    return {prefix: handler.register for prefix, handler in handlers.items()}


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
