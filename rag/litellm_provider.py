"""The shared base of Mighty's in-process LiteLLM providers (`local/...` here, `fusion/...` in api).

A provider only says how to load a generator for a model string; this base maps OpenAI parameters
onto `SamplingOptions`, runs generation in threads for the async entry points (generation is
CPU-bound and would otherwise stall the event loop for seconds), turns a closed stream into a
cancelled generation, and reports usage and finish reasons the way LiteLLM expects.
"""
from __future__ import annotations

import asyncio
import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator
from typing import Any

# Offline-first: without this LiteLLM tries to download its model price map at import time and
# retries for several seconds when there is no network. An explicit setting still wins.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm  # noqa: E402
from litellm import CustomLLM  # noqa: E402
from litellm.llms.custom_llm import CustomLLMError  # noqa: E402,F401 - providers raise it for unloadable models
from litellm.types.utils import GenericStreamingChunk  # noqa: E402

from rag.runtime.decode import Decoded, GenerationTimeout  # noqa: E402
from rag.runtime.sampling import LOOP_NGRAM, SamplingOptions  # noqa: E402

DEFAULT_MAX_TOKENS = 256
_REGISTER_LOCK = threading.Lock()
_DONE = object()


def sampling_options(optional_params: dict[str, Any]) -> SamplingOptions:
    """OpenAI-style parameters as SamplingOptions.

    temperature defaults to 0 (greedy), not OpenAI's 1: sampling a small model at 1.0 rambles, and
    deterministic answers are what a RAG pipeline and its tests want. Chat generation bans repeated
    4-grams, since small models loop under greedy decoding.
    """
    stop = optional_params.get("stop")
    max_tokens = optional_params.get("max_tokens") or optional_params.get("max_completion_tokens")
    return SamplingOptions(
        max_tokens=int(max_tokens or DEFAULT_MAX_TOKENS),
        temperature=float(optional_params.get("temperature") or 0.0),
        top_p=float(optional_params.get("top_p") if optional_params.get("top_p") is not None else 1.0),
        stop=[stop] if isinstance(stop, str) else list(stop or []),
        seed=optional_params.get("seed"),
        no_repeat_ngram=LOOP_NGRAM,
    )


def seconds(timeout: Any) -> float | None:
    """LiteLLM passes a float (600 by default) or an httpx.Timeout; generation honours the read part."""
    if timeout is None or isinstance(timeout, (int, float)):
        return None if timeout is None else float(timeout)
    read = getattr(timeout, "read", None)
    return float(read) if read is not None else None


def usage(result: Decoded) -> dict[str, int]:
    """OpenAI's counts, plus the draft model's guesses and how many were accepted when one drafted."""
    counts = {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
              "total_tokens": result.prompt_tokens + result.completion_tokens}
    if result.drafted:
        counts.update(draft_tokens=result.drafted, accepted_draft_tokens=result.accepted)
    return counts


class InProcessProvider(CustomLLM, ABC):
    """A LiteLLM custom provider whose models run in this process."""

    provider: str

    @abstractmethod
    def generate(self, model: str, messages: list, options: SamplingOptions, timeout: float | None) -> Decoded:
        """One whole completion; raises CustomLLMError for a model that cannot be loaded."""

    @abstractmethod
    def stream(self, model: str, messages: list, options: SamplingOptions, timeout: float | None,
               cancel: threading.Event | None, results: list[Decoded]) -> Iterator[str]:
        """Text deltas; the final Decoded is appended to `results`."""

    def _timeout(self, error: GenerationTimeout, model: str) -> Exception:
        return litellm.Timeout(message=str(error), model=model, llm_provider=self.provider)

    def completion(self, model: str, messages: list, *args: Any, **kwargs: Any) -> Any:
        options = sampling_options(kwargs.get("optional_params") or {})
        try:
            result = self.generate(model, messages, options, seconds(kwargs.get("timeout")))
        except GenerationTimeout as error:
            raise self._timeout(error, model) from error
        response = kwargs["model_response"]
        response.choices[0].message.content = result.text
        response.choices[0].finish_reason = result.finish_reason
        response.created = int(time.time())
        response.model = f"{self.provider}/{model}"
        response.usage = litellm.Usage(**usage(result))
        return response

    def streaming(self, model: str, messages: list, *args: Any, **kwargs: Any) -> Iterator[GenericStreamingChunk]:
        return self._chunks(model, messages, kwargs.get("optional_params") or {}, kwargs.get("timeout"), None)

    def _chunks(self, model: str, messages: list, optional_params: dict[str, Any], timeout: Any,
                cancel: threading.Event | None) -> Iterator[GenericStreamingChunk]:
        """Text deltas as LiteLLM chunks; the last one carries the finish reason and usage."""
        results: list[Decoded] = []
        try:
            for delta in self.stream(model, messages, sampling_options(optional_params), seconds(timeout), cancel,
                                     results):
                yield {"text": delta, "is_finished": False, "finish_reason": "", "usage": None, "index": 0}
        except GenerationTimeout as error:
            raise self._timeout(error, model) from error
        final = results[0] if results else None
        yield {"text": "", "is_finished": True, "finish_reason": final.finish_reason if final else "stop",
               "usage": usage(final) if final else None, "index": 0}  # type: ignore[typeddict-item]

    async def acompletion(self, model: str, messages: list, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(self.completion, model, messages, *args, **kwargs)

    async def astreaming(  # type: ignore[override]
        self, model: str, messages: list, *args: Any, **kwargs: Any
    ) -> AsyncIterator[GenericStreamingChunk]:
        """Each chunk is pulled in a worker thread; a cancelled consumer stops the generation."""
        cancel = threading.Event()
        chunks = self._chunks(model, messages, kwargs.get("optional_params") or {}, kwargs.get("timeout"), cancel)
        try:
            while (chunk := await asyncio.to_thread(next, chunks, _DONE)) is not _DONE:
                yield chunk  # type: ignore[misc]
        finally:
            cancel.set()  # the worker sees it after its current token; the thread is not blocked

    def register(self) -> "InProcessProvider":
        """Make `<provider>/<model>` resolvable by LiteLLM; calling it again changes nothing."""
        with _REGISTER_LOCK:
            entries = [e for e in litellm.custom_provider_map if e.get("provider") != self.provider]
            litellm.custom_provider_map = [*entries, {"provider": self.provider, "custom_handler": self}]
            if self.provider not in litellm._custom_providers:  # litellm normally syncs this per call
                litellm._custom_providers.append(self.provider)
            if self.provider not in litellm.provider_list:
                litellm.provider_list.append(self.provider)
        return self
