"""Where the service's local models decode: fused generation (`/v1/fusion/generate`, `fusion:` chat
completions) and, on Ray Serve, every `local/` and `fusion/` LiteLLM call too.

The fusion routes never hold a model themselves: they name what a call needs loaded (`ModelRef`,
whose `id` is the key models are loaded and routed by) and ask the backend's model host.
`InProcessModels`, the default, loads through the runtime's process-wide caches and decodes in this
process's threads. `mighty serve --ray` swaps in `api.ray_serve.backend.ServeModels`, which sends
these calls, and LiteLLM's `local/` and `fusion/` calls (in-process providers without Ray), to the
Serve model deployment; each of its replicas *is* an `InProcessModels` whose loads go through
`@serve.multiplexed`, so a model's calls reach the replicas already holding it and fused decoding
keeps the base and its cards in one replica.
"""
from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi.concurrency import iterate_in_threadpool, run_in_threadpool

from rag.runtime import Decoded, GenerationTimeout, LocalModel, SamplingOptions
from rag.runtime.decode import Deadline

if TYPE_CHECKING:
    from experts.fusion.cards import CardRef
    from experts.fusion.decoder import FusedDecoder
    from experts.fusion.fused import FusedModel

LOCAL_PREFIX = "local/"


@dataclass(frozen=True)
class ModelRef:
    """What a call needs loaded: a local model by name, or a base fused with resolved cards."""

    local: str | None = None
    base: str | None = None
    cards: tuple[CardRef, ...] = ()

    @property
    def id(self) -> str:
        """The load and routing key: `local/<name>`, or `fusion:<base>+<card@version>...` (registered
        versions never change, so equal ids mean equal weights)."""
        if self.local is not None:
            return LOCAL_PREFIX + self.local
        return "fusion:" + "+".join([self.base or "", *(card.label for card in self.cards)])


def local_ref(name: str) -> ModelRef:
    return ModelRef(local=name)


def fused_ref(base: str | None, cards: list[CardRef]) -> ModelRef:
    """base + cards, the base defaulting to the first card's (as fused decoding does)."""
    return ModelRef(base=base or cards[0].base, cards=tuple(cards))


@dataclass(frozen=True)
class FusionRule:
    """How a fused model combines its members for one call (None: the cards' fitted rule, else mixture)."""

    method: str | None = None
    weights: list[float] | None = None
    alpha: float | None = None
    entropy_temperature: float | None = None
    beta: float | None = None
    plausibility: float | None = None


@dataclass(frozen=True)
class PromptJob:
    """A `/v1/fusion/generate` call: plain-text prompts or one chat, decoded within `timeout` seconds."""

    prompts: list[str] | None
    messages: list[dict[str, Any]] | None
    options: SamplingOptions
    timeout: float | None


class ModelsUnavailable(RuntimeError):
    """No replica of the model deployment could take the call (503: retry later)."""


# -- the work itself, in this process (blocking: run in worker threads) ---------------------------
def load(ref: ModelRef) -> LocalModel | FusedModel:
    """The loaded model for `ref`, from the runtime's process-wide caches (a hit costs nothing).
    Unknown models are errors that say so: LocalModelError for local, FusionError for fused."""
    if ref.local is not None:
        from rag.litellm_local import load_local

        return load_local(ref.local)
    from experts.fusion.service import load_fused

    return load_fused(ref.base, list(ref.cards))


def _decoder(model: FusedModel, rule: FusionRule) -> FusedDecoder:
    from experts.fusion.service import fused_decoder

    return fused_decoder(model, rule.method, rule.weights, rule.alpha, rule.entropy_temperature, rule.beta,
                         rule.plausibility)


def _prompts(decoder: FusedDecoder, job: PromptJob) -> list[list[int]]:
    if job.messages is not None:
        prompts = [decoder.encode_chat(job.messages)]
    else:
        prompts = [decoder.encode_text(p) for p in job.prompts or []]
    if not prompts or any(not p for p in prompts):
        raise ValueError("a prompt is empty")
    return prompts


def _summary(decoder: FusedDecoder) -> dict:
    from experts.fusion.evaluate import describe

    return {"model": decoder.model.describe(), "method": decoder.params.method,
            "parameters": describe(decoder.params), "vocabulary": decoder.model.vocab.describe()}


def _outcome(results: list, decoder: FusedDecoder) -> dict:
    stats = decoder.last_stats
    prompt_tokens = sum(r.prompt_tokens for r in results)
    completion_tokens = sum(r.completion_tokens for r in results)
    return {"choices": [{"index": i, "text": r.text, "finish_reason": r.finish_reason,
                         "completion_tokens": r.completion_tokens} for i, r in enumerate(results)],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
            "stats": {"tokens_per_s": round(stats.tokens_per_s, 2),
                      "overhead_ms_per_step": round(stats.overhead_ms_per_step, 3),
                      "mean_weights": stats.mean_weights}}


def prompt_result(model: FusedModel, rule: FusionRule, job: PromptJob, cancel: threading.Event) -> dict:
    """The whole `/v1/fusion/generate` answer: summary, choices, usage and decoding stats."""
    decoder = _decoder(model, rule)
    prompts, summary = _prompts(decoder, job), _summary(decoder)
    deadline = Deadline(cancel, job.timeout)
    try:
        results = decoder.generate(prompts, job.options, cancel)
    finally:
        deadline.close(summary["model"], job.timeout)  # GenerationTimeout when time ran out
    return {**summary, **_outcome(results, decoder)}


def prompt_events(model: FusedModel, rule: FusionRule, job: PromptJob, cancel: threading.Event) -> Iterator[dict]:
    """The streamed answer: the summary first (once the rule and prompts are known to be usable), then
    `{"index", "delta"}` per settled piece of text, then the outcome (as `prompt_result`'s)."""
    decoder = _decoder(model, rule)
    prompts, summary = _prompts(decoder, job), _summary(decoder)
    yield summary
    deadline = Deadline(cancel, job.timeout)
    results: list = []
    for index, delta in decoder.stream(prompts, job.options, results, cancel):
        yield {"index": index, "delta": delta}
    deadline.close(summary["model"], job.timeout)
    yield _outcome(results, decoder)


def chat(model: LocalModel | FusedModel, rule: FusionRule, messages: list[dict], options: SamplingOptions,
         timeout: float | None, cancel: threading.Event) -> Decoded:
    """One chat completion by a local model or a fused one."""
    if isinstance(model, LocalModel):
        return model.generate(messages, options, cancel, timeout)
    from experts.fusion.service import chat_generation

    return chat_generation(_decoder(model, rule), messages, options, timeout, cancel)  # type: ignore[return-value]


def chat_deltas(model: LocalModel | FusedModel, rule: FusionRule, messages: list[dict], options: SamplingOptions,
                timeout: float | None, cancel: threading.Event, results: list) -> Iterator[str]:
    """Text deltas of one chat completion (their concatenation is `chat`'s text); `results` gets the
    final Decoded. The first delta is "": the model is loaded and the rule usable."""
    if isinstance(model, LocalModel):
        yield ""
        yield from model.stream(messages, options, cancel, timeout, results)
        return
    from experts.fusion.service import chat_stream

    decoder = _decoder(model, rule)
    yield ""
    yield from chat_stream(decoder, messages, options, timeout, cancel, results)


# -- the host the routes call -------------------------------------------------------------------
class InProcessModels:
    """Decodes in this process's worker threads; a call whose client goes away (its task cancelled,
    its stream closed) stops after the current token.

    Each method is a coroutine or async iterator, so a Serve replica can run this class as it is;
    `model()` is the one place a loaded model comes from (the replica routes it through Serve's
    multiplexed loader)."""

    async def model(self, ref: ModelRef) -> LocalModel | FusedModel:
        return await run_in_threadpool(load, ref)

    async def prompt_result(self, ref: ModelRef, rule: FusionRule, job: PromptJob) -> dict:
        model = await self.model(ref)
        cancel = threading.Event()
        try:  # the timeout covers waiting for the model too (another generation may hold it)
            return await asyncio.wait_for(run_in_threadpool(prompt_result, model, rule, job, cancel), job.timeout)
        except TimeoutError:
            raise GenerationTimeout(f"fused model {ref.id} took longer than {job.timeout:g}s") from None
        finally:
            cancel.set()

    async def prompt_events(self, ref: ModelRef, rule: FusionRule, job: PromptJob) -> AsyncIterator[dict]:
        model = await self.model(ref)
        cancel = threading.Event()
        try:
            async for event in iterate_in_threadpool(prompt_events(model, rule, job, cancel)):
                yield event
        finally:
            cancel.set()

    async def chat(self, ref: ModelRef, rule: FusionRule, messages: list[dict], options: SamplingOptions,
                   timeout: float | None) -> Decoded:
        model = await self.model(ref)
        cancel = threading.Event()
        try:
            return await run_in_threadpool(chat, model, rule, messages, options, timeout, cancel)
        finally:
            cancel.set()

    async def chat_deltas(self, ref: ModelRef, rule: FusionRule, messages: list[dict], options: SamplingOptions,
                          timeout: float | None) -> AsyncIterator[str | Decoded]:
        """`chat_deltas`' text deltas (the first is ""), then the final Decoded."""
        model = await self.model(ref)
        cancel = threading.Event()
        results: list = []
        try:
            async for delta in iterate_in_threadpool(chat_deltas(model, rule, messages, options, timeout, cancel,
                                                                 results)):
                yield delta
            yield results[0]
        finally:
            cancel.set()
