"""Expose Mighty's embedded models to LiteLLM as the custom provider `local`.

After `register_local_provider()`, `litellm.completion(model="local/smollm2-135m-instruct", ...)`
runs the in-process model, so callers use one code path whether the model is local or hosted.
The async entry points hand all model work to threads: generation is CPU-bound and would
otherwise stall the event loop for seconds.
"""
from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

# Offline-first: without this LiteLLM tries to download its model price map at import time and
# retries for several seconds when there is no network. An explicit setting still wins.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm  # noqa: E402
from litellm import CustomLLM  # noqa: E402
from litellm.llms.custom_llm import CustomLLMError  # noqa: E402
from litellm.types.utils import GenericStreamingChunk  # noqa: E402

from rag.local_llm import GenerationResult, GenerationTimeout, LocalModelError, get_local_llm  # noqa: E402

PROVIDER = "local"
DEFAULT_MAX_TOKENS = 256
_REGISTER_LOCK = threading.Lock()
_DONE = object()


def _params(optional_params: dict[str, Any], timeout: Any = None) -> dict[str, Any]:
    """OpenAI-style parameters mapped onto LocalLLM's arguments.

    temperature defaults to 0 (greedy), not OpenAI's 1: sampling a 135M model at 1.0 rambles,
    and deterministic answers are what a RAG pipeline and its tests want.
    """
    stop = optional_params.get("stop")
    max_tokens = optional_params.get("max_tokens") or optional_params.get("max_completion_tokens")
    return {
        "max_tokens": int(max_tokens or DEFAULT_MAX_TOKENS),
        "temperature": float(optional_params.get("temperature") or 0.0),
        "top_p": float(optional_params.get("top_p") if optional_params.get("top_p") is not None else 1.0),
        "stop": [stop] if isinstance(stop, str) else list(stop or []),
        "seed": optional_params.get("seed"),
        "timeout": _seconds(timeout),
    }


def _seconds(timeout: Any) -> float | None:
    """LiteLLM passes a float (600 by default) or an httpx.Timeout; generation honours the read part."""
    if timeout is None or isinstance(timeout, (int, float)):
        return None if timeout is None else float(timeout)
    read = getattr(timeout, "read", None)
    return float(read) if read is not None else None


def _model(name: str):
    """The loaded model, with load failures turned into an error LiteLLM reports as-is."""
    try:
        return get_local_llm(name)
    except LocalModelError as error:
        raise CustomLLMError(status_code=404, message=str(error)) from error


def _usage(result: GenerationResult) -> dict[str, int]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


class LocalProvider(CustomLLM):
    """LiteLLM handler for `local/<model>`: a registered name, a local folder, or a cached HF id."""

    def completion(self, model: str, messages: list, *args: Any, **kwargs: Any) -> Any:
        optional_params = kwargs.get("optional_params") or {}
        model_response = kwargs["model_response"]
        try:
            result = _model(model).generate(messages, **_params(optional_params, kwargs.get("timeout")))
        except GenerationTimeout as error:
            raise litellm.Timeout(message=str(error), model=model, llm_provider=PROVIDER) from error
        model_response.choices[0].message.content = result.text
        model_response.choices[0].finish_reason = result.finish_reason
        model_response.created = int(time.time())
        model_response.model = f"{PROVIDER}/{model}"
        model_response.usage = litellm.Usage(**_usage(result))
        return model_response

    def streaming(self, model: str, messages: list, *args: Any, **kwargs: Any) -> Iterator[GenericStreamingChunk]:
        return self._chunks(model, messages, kwargs.get("optional_params") or {}, kwargs.get("timeout"), None)

    def _chunks(
        self, model: str, messages: list, optional_params: dict[str, Any], timeout: Any,
        cancel: threading.Event | None,
    ) -> Iterator[GenericStreamingChunk]:
        """Text deltas as LiteLLM chunks; the last one carries the finish reason and usage."""
        results: list[GenerationResult] = []
        llm = _model(model)
        try:
            for delta in llm.stream(messages, **_params(optional_params, timeout), cancel=cancel, result=results):
                yield {"text": delta, "is_finished": False, "finish_reason": "", "usage": None, "index": 0}
        except GenerationTimeout as error:
            raise litellm.Timeout(message=str(error), model=model, llm_provider=PROVIDER) from error
        final = results[0] if results else None
        yield {
            "text": "",
            "is_finished": True,
            "finish_reason": final.finish_reason if final else "stop",
            "usage": _usage(final) if final else None,  # type: ignore[typeddict-item]
            "index": 0,
        }

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


_HANDLER = LocalProvider()


def register_local_provider() -> LocalProvider:
    """Make `local/<model>` resolvable by LiteLLM; calling it again changes nothing."""
    with _REGISTER_LOCK:
        entries = [e for e in litellm.custom_provider_map if e.get("provider") != PROVIDER]
        litellm.custom_provider_map = [*entries, {"provider": PROVIDER, "custom_handler": _HANDLER}]
        if PROVIDER not in litellm._custom_providers:  # litellm normally syncs this per call
            litellm._custom_providers.append(PROVIDER)
        if PROVIDER not in litellm.provider_list:
            litellm.provider_list.append(PROVIDER)
    return _HANDLER
