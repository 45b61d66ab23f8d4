"""Expose Mighty's local models to LiteLLM as the custom provider `local`.

After `register_local_provider()`, `litellm.completion(model="local/qwen2.5-coder-0.5b-instruct", ...)`
runs the model in this process on the llama.cpp runtime, so callers use one code path whether the
model is local or hosted. Models are named by registered id or by a name the operator configured
(`MIGHTY_LOCAL_MODELS=name=/path/model.gguf`); a model string never opens a path, since clients
choose model strings.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator

from rag.litellm_provider import CustomLLMError, InProcessProvider
from rag.runtime import Decoded, LocalModel, LocalModelError, SamplingOptions, get_model
from rag.runtime.speculative import paired_model

PROVIDER = "local"


def load_local(name: str) -> LocalModel:
    """The loaded model a client named (never a path), drafting for it when the operator paired it with
    a draft model (see `rag.runtime.speculative`); LocalModelError when there is no such model."""
    return paired_model(name) or get_model(name, allow_paths=False)


def local_model(name: str) -> LocalModel:
    """`load_local`, with load failures turned into an error LiteLLM reports as-is (404)."""
    try:
        return load_local(name)
    except LocalModelError as error:
        raise CustomLLMError(status_code=404, message=str(error)) from error


class LocalProvider(InProcessProvider):
    """LiteLLM handler for `local/<model>`."""

    provider = PROVIDER

    def generate(self, model: str, messages: list, options: SamplingOptions, timeout: float | None) -> Decoded:
        return local_model(model).generate(messages, options, timeout=timeout)

    def stream(self, model: str, messages: list, options: SamplingOptions, timeout: float | None,
               cancel: threading.Event | None, results: list[Decoded]) -> Iterator[str]:
        return local_model(model).stream(messages, options, cancel, timeout, results)


_HANDLER = LocalProvider()


def register_local_provider() -> LocalProvider:
    """Make `local/<model>` resolvable by LiteLLM; calling it again changes nothing."""
    _HANDLER.register()
    return _HANDLER
