"""Local models on Ray Serve: the model deployment (`local-models`) and the ingress's client of it.

Each replica of `LocalModels` is an `api.local_models.InProcessModels` whose one loading method goes
through `@serve.multiplexed`, keyed by the call's `ModelRef.id` (`local/<name>`, or
`fusion:<base>+<card@version>...`). The ingress calls it through a handle with
`.options(multiplexed_model_id=id)`, so Serve sends a model's calls to a replica that already holds
it (a model no replica holds goes to the one holding fewest). A fused model is one id: its base and
cards load and decode together in one replica, since a network hop per token would cost more than
the token. Weights stay in the runtime's own caches (`rag.runtime.cache`, `experts.fusion.fused`);
Serve's per-replica LRU matches the fused-model cache's size, so what Serve routes by is what the
replica holds.
"""
from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ray import serve
from ray.exceptions import RayError, RayTaskError
from ray.serve.exceptions import RayServeException

from api.local_models import (FusionRule, InProcessModels, ModelRef, ModelsUnavailable, PromptJob, fused_ref, load,
                              local_ref)
from experts.fusion.fused import KEEP_FUSED
from rag.litellm_provider import CustomLLMError, InProcessProvider
from rag.runtime import Decoded, LocalModel, LocalModelError, SamplingOptions

DEPLOYMENT = "local-models"
MODELS_PER_REPLICA = KEEP_FUSED


@dataclass(frozen=True)
class ReplicaModels:
    """What one replica has done: how often it loaded each model id, and how many calls it served."""

    replica: str
    loads: dict[str, int]
    calls: dict[str, int]


class LocalModels(InProcessModels):
    """One replica of the model deployment: the in-process host, loading through Serve's multiplexing."""

    def __init__(self) -> None:
        self._refs: dict[str, ModelRef] = {}
        self.loads: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()

    async def model(self, ref: ModelRef) -> LocalModel:
        routed = serve.get_multiplexed_model_id()
        if routed != ref.id:  # routing by another id would send calls to replicas without the model
            raise RuntimeError(f"a call for {ref.id!r} was routed as {routed!r}: call the model deployment "
                               "with .options(multiplexed_model_id=ref.id)")
        self._refs[ref.id] = ref
        model = await self._loaded(ref.id)
        self.calls[ref.id] += 1
        return model

    @serve.multiplexed(max_num_models_per_replica=MODELS_PER_REPLICA)
    async def _loaded(self, model_id: str) -> LocalModel:
        model = await asyncio.to_thread(load, self._refs[model_id])  # seconds: off the replica's event loop
        self.loads[model_id] += 1
        return model

    def report(self) -> ReplicaModels:
        return ReplicaModels(serve.get_replica_context().replica_id.unique_id, dict(self.loads), dict(self.calls))


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
