"""Expose fused models to LiteLLM as the custom provider `fusion`, registered by api at start-up.

Once registered (`api.providers.install()` at start-up), `litellm.completion(model="fusion/<base>+<card>", ...)` decodes in-process with
the base and cards fused token by token, so a `rag:` pipeline (or any LiteLLM caller) can name a
fused model as its LLM: retrieval context goes into the prompt, expert cards act on every token.
It lives in `api` because it joins `rag` (LiteLLM) and `experts` (fusion); `rag.llm` only learns
that the `fusion/` prefix has a provider to register on first use.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator

from experts.fusion.decoder import FusedDecoder
from experts.fusion.service import FusionError, chat_generation, chat_stream, decoder_for_model
from rag.litellm_provider import CustomLLMError, InProcessProvider
from rag.runtime import Decoded, SamplingOptions

PROVIDER = "fusion"


def _decoder(model: str) -> FusedDecoder:
    try:
        return decoder_for_model(f"{PROVIDER}/{model}")
    except FusionError as error:
        raise CustomLLMError(status_code=error.status, message=str(error)) from error


class FusionProvider(InProcessProvider):
    """LiteLLM handler for `fusion/<base>+<card>[+<card>]`."""

    provider = PROVIDER

    def generate(self, model: str, messages: list, options: SamplingOptions, timeout: float | None) -> Decoded:
        return chat_generation(_decoder(model), messages, options, timeout)

    def stream(self, model: str, messages: list, options: SamplingOptions, timeout: float | None,
               cancel: threading.Event | None, results: list[Decoded]) -> Iterator[str]:
        return chat_stream(_decoder(model), messages, options, timeout, cancel, results)


_HANDLER = FusionProvider()


def register_fusion_provider() -> FusionProvider:
    """Make `fusion/<base>+<card>` resolvable by LiteLLM; calling it again changes nothing."""
    _HANDLER.register()
    return _HANDLER

