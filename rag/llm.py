"""Every LLM call goes through LiteLLM by model string: hosted, self-hosted or the embedded model.

`local/<name>` models run in-process (registered as a LiteLLM custom provider), so the pipeline
has a single code path whether the model is SmolLM2 on this CPU or a hosted frontier model.
`fusion:<base>+<card>` (or `fusion/...`) models run in-process too, with expert cards fused in.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from pydantic import BaseModel, Field

from rag import cascade_spec


# LiteLLM fetches a model price list at import unless told to use its bundled copy; this process
# may have no network, and a price list is no reason to wait.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


class LLMOptions(BaseModel):
    """Per-request or per-collection model settings."""

    model: str
    api_base: str | None = None
    api_key: str | None = None
    fallbacks: list[str] = Field(default_factory=list)
    timeout_s: float = 120.0
    retries: int = 1
    max_tokens: int = 256
    temperature: float = 0.0
    seed: int | None = None  # for reproducible samples (cascade self-verification samples at temperature 1)


@dataclass
class Completion:
    text: str
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    extra: dict = field(default_factory=dict)


class LLMTimeout(TimeoutError):
    pass


class LLMError(RuntimeError):
    pass


class LLMModelError(LLMError):
    """The model string itself is unusable (unknown provider, model refused the request): a client error."""


_LOCAL_PREFIXES = ("local/", "fusion:", "fusion/")


def check_model(model: str, api_base: str | None = None) -> None:
    """Refuse a model string LiteLLM cannot route, before any retrieval or generation work is done.

    A cascade (`cascade:<small>><large>...`, parsed only by rag.cascade_spec) is checked here too:
    its syntax, policy and threshold, then each of its two models like any other."""
    if cascade_spec.is_cascade(model):
        try:
            spec = cascade_spec.parse(model)
        except cascade_spec.CascadeSpecError as exc:
            raise LLMModelError(str(exc)) from None
        for side in (spec.small, spec.large):
            check_model(side, api_base)
        return
    if model.startswith(_LOCAL_PREFIXES):
        return
    import litellm

    litellm.suppress_debug_info = True  # no provider list printed on stdout for a bad string
    try:
        litellm.get_llm_provider(model, api_base=api_base)
    except Exception:  # noqa: BLE001 - LiteLLM signals an unknown provider with several error types
        raise LLMModelError(f"unknown model {model!r}: LiteLLM cannot tell its provider; write it as "
                            "provider/model (for example openai/gpt-4o-mini or ollama/llama3)") from None


def _message(exc: BaseException) -> str:
    """A provider's error text without any traceback LiteLLM folded into it, and not too long."""
    text = str(exc).split("Traceback (most recent call last)", 1)[0].strip()
    return text[:500] + ("..." if len(text) > 500 else "")


def _register_local() -> None:
    from rag.litellm_local import register_local_provider

    register_local_provider()


# In-process LiteLLM providers by model prefix, registered with LiteLLM on first use. `local/` lives
# in rag; layers above add theirs at start-up (api adds `fusion/`, which needs experts).
_PROVIDERS: dict[str, Callable[[], object]] = {"local/": _register_local}
_PROVIDERS_LOCK = threading.Lock()


def add_provider(prefix: str, register: Callable[[], object]) -> None:
    """Have `register()` run before the first call to a model whose string starts with `prefix`."""
    with _PROVIDERS_LOCK:
        _PROVIDERS[prefix] = register


def _arguments(options: LLMOptions, messages: list[dict], stream: bool) -> dict:
    import litellm

    model = options.model
    if cascade_spec.is_cascade(model):  # two models and a policy: rag.cascade runs them, over a collection
        raise LLMModelError(f"{model!r} is a cascade; it answers over a collection (/v1/query, rag:<collection>)")
    if model.startswith("fusion:"):  # base + expert cards fused in-process, token by token
        model = "fusion/" + model[len("fusion:"):]
    with _PROVIDERS_LOCK:
        register = next((r for prefix, r in _PROVIDERS.items() if model.startswith(prefix)), None)
    if register is not None:
        register()
    litellm.suppress_debug_info = True
    litellm.drop_params = True  # providers that lack a parameter ignore it instead of failing
    arguments = {"model": model, "messages": messages, "timeout": options.timeout_s,
                 "num_retries": options.retries, "max_tokens": options.max_tokens,
                 "temperature": options.temperature, "stream": stream}
    if options.api_base:
        arguments["api_base"] = options.api_base
    if options.api_key:
        arguments["api_key"] = options.api_key
    if options.fallbacks:
        arguments["fallbacks"] = options.fallbacks
    if options.seed is not None:
        arguments["seed"] = options.seed
    return arguments


@contextmanager
def _model_errors(options: LLMOptions):
    """LiteLLM's timeout and API errors as ours, naming the model."""
    import litellm

    try:
        yield
    except litellm.Timeout as exc:
        raise LLMTimeout(f"model {options.model!r} did not answer within {options.timeout_s:g}s") from exc
    except (litellm.BadRequestError, litellm.NotFoundError) as exc:
        raise LLMModelError(f"model {options.model!r} refused the request: {_message(exc)}") from exc
    except (LLMError, LLMTimeout):
        raise
    except Exception as exc:  # noqa: BLE001 - any provider failure is the model's, named, never a 500
        raise LLMError(f"model {options.model!r} failed: {_message(exc)}") from exc


def complete(options: LLMOptions, messages: list[dict]) -> Completion:
    import litellm

    with _model_errors(options):
        response = litellm.completion(**_arguments(options, messages, stream=False))
    choice = response.choices[0]
    usage = getattr(response, "usage", None)
    return Completion(choice.message.content or "", response.model or options.model,
                      getattr(usage, "prompt_tokens", 0) or 0, getattr(usage, "completion_tokens", 0) or 0,
                      choice.finish_reason or "stop")


def stream(options: LLMOptions, messages: list[dict], usage: dict[str, int] | None = None) -> Iterator[str]:
    """Text deltas as the model produces them; `usage`, when given, receives the token counts the
    provider reports at the end of the stream (prompt_tokens, completion_tokens)."""
    import litellm

    arguments = _arguments(options, messages, stream=True)
    if usage is not None:
        arguments["stream_options"] = {"include_usage": True}
    with _model_errors(options):
        for chunk in litellm.completion(**arguments):
            reported = getattr(chunk, "usage", None)
            if usage is not None and reported:
                usage.update(prompt_tokens=getattr(reported, "prompt_tokens", 0) or 0,
                             completion_tokens=getattr(reported, "completion_tokens", 0) or 0)
            delta = chunk.choices[0].delta.content if chunk.choices else None
            if delta:
                yield delta
