"""Expose fused models to LiteLLM as the custom provider `fusion`.

After `register_fusion_provider()`, `litellm.completion(model="fusion/<base>+<card>", ...)` decodes
in-process with the base and cards fused token by token, so a `rag:` pipeline (or any LiteLLM
caller) can name a fused model as its LLM: retrieval context goes into the prompt, expert cards act
on every token. Model strings written `fusion:<base>+<card>` are mapped to this provider by rag.llm.
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from rag.litellm_local import _DONE, _params, _usage  # noqa: F401 - loads LiteLLM offline-first

import litellm  # noqa: E402  (after rag.litellm_local set LiteLLM's offline switch)
from litellm import CustomLLM  # noqa: E402
from litellm.llms.custom_llm import CustomLLMError  # noqa: E402
from litellm.types.utils import GenericStreamingChunk  # noqa: E402

from rag.local_llm import LOOP_NGRAM, GenerationResult, GenerationTimeout  # noqa: E402

PROVIDER = "fusion"
_REGISTER_LOCK = threading.Lock()


def _decoder(model: str):
    from experts.fusion.service import FusionError, decoder_for_model

    try:
        return decoder_for_model(f"{PROVIDER}/{model}")
    except FusionError as error:
        raise CustomLLMError(status_code=error.status, message=str(error)) from error


def _options(optional_params: dict[str, Any], timeout: Any) -> tuple[Any, float | None]:
    from experts.fusion.sampling import SamplingOptions

    params = _params(optional_params, timeout)
    options = SamplingOptions(max_tokens=params["max_tokens"], temperature=params["temperature"],
                              top_p=params["top_p"], stop=params["stop"], seed=params["seed"],
                              no_repeat_ngram=LOOP_NGRAM)
    return options, params["timeout"]


class FusionProvider(CustomLLM):
    """LiteLLM handler for `fusion/<base>+<card>[+<card>]`."""

    def completion(self, model: str, messages: list, *args: Any, **kwargs: Any) -> Any:
        from experts.fusion.service import chat_generation

        options, timeout = _options(kwargs.get("optional_params") or {}, kwargs.get("timeout"))
        try:
            result = chat_generation(_decoder(model), messages, options, timeout)
        except GenerationTimeout as error:
            raise litellm.Timeout(message=str(error), model=model, llm_provider=PROVIDER) from error
        response = kwargs["model_response"]
        response.choices[0].message.content = result.text
        response.choices[0].finish_reason = result.finish_reason
        response.created = int(time.time())
        response.model = f"{PROVIDER}/{model}"
        response.usage = litellm.Usage(**_usage(_as_result(result)))
        return response

    def streaming(self, model: str, messages: list, *args: Any, **kwargs: Any) -> Iterator[GenericStreamingChunk]:
        return self._chunks(model, messages, kwargs.get("optional_params") or {}, kwargs.get("timeout"), None)

    def _chunks(self, model: str, messages: list, optional_params: dict[str, Any], timeout: Any,
                cancel: threading.Event | None) -> Iterator[GenericStreamingChunk]:
        from experts.fusion.service import chat_stream

        options, seconds = _options(optional_params, timeout)
        results: list = []
        try:
            for delta in chat_stream(_decoder(model), messages, options, seconds, cancel, results):
                yield {"text": delta, "is_finished": False, "finish_reason": "", "usage": None, "index": 0}
        except GenerationTimeout as error:
            raise litellm.Timeout(message=str(error), model=model, llm_provider=PROVIDER) from error
        final = _as_result(results[0]) if results else None
        yield {"text": "", "is_finished": True, "finish_reason": final.finish_reason if final else "stop",
               "usage": _usage(final) if final else None, "index": 0}  # type: ignore[typeddict-item]

    async def acompletion(self, model: str, messages: list, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(self.completion, model, messages, *args, **kwargs)

    async def astreaming(  # type: ignore[override]
        self, model: str, messages: list, *args: Any, **kwargs: Any
    ) -> AsyncIterator[GenericStreamingChunk]:
        cancel = threading.Event()
        chunks = self._chunks(model, messages, kwargs.get("optional_params") or {}, kwargs.get("timeout"), cancel)
        try:
            while (chunk := await asyncio.to_thread(next, chunks, _DONE)) is not _DONE:
                yield chunk  # type: ignore[misc]
        finally:
            cancel.set()


def _as_result(generation) -> GenerationResult:
    return GenerationResult(generation.text, generation.prompt_tokens, generation.completion_tokens,
                            generation.finish_reason)


_HANDLER = FusionProvider()


def register_fusion_provider() -> FusionProvider:
    """Make `fusion/<base>+<card>` resolvable by LiteLLM; calling it again changes nothing."""
    with _REGISTER_LOCK:
        entries = [e for e in litellm.custom_provider_map if e.get("provider") != PROVIDER]
        litellm.custom_provider_map = [*entries, {"provider": PROVIDER, "custom_handler": _HANDLER}]
        if PROVIDER not in litellm._custom_providers:
            litellm._custom_providers.append(PROVIDER)
        if PROVIDER not in litellm.provider_list:
            litellm.provider_list.append(PROVIDER)
    return _HANDLER
