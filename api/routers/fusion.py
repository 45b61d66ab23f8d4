"""Fused generation over HTTP: `POST /v1/fusion/generate`, and `fusion:` models in chat completions.

The routes check the request (base allowed, cards registered, decoding controls) and hand the
decoding to the backend's model host (`api.local_models`): worker threads of this process by
default, the Serve model deployment with `mighty serve --ray`. Streaming sends tokens as server-sent
events as soon as they are settled; a client that goes away cancels its generation after the
current token.
"""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, status
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from api import openai_chat as envelopes
from api.dependencies import get_principal, get_state
from api.keys import Principal
from api.schemas import ChatRequest
from api.state import ServiceState
from rag.runtime import LOOP_NGRAM, GenerationTimeout

router = APIRouter(prefix="/v1/fusion", tags=["fusion"])
MAX_PROMPTS = 16


class FusionGenerateRequest(BaseModel):
    """Base + cards + rule, one or more prompts (plain text or one chat), and decoding controls."""

    model_config = ConfigDict(extra="forbid")

    cards: list[str] = Field(min_length=1, max_length=8, description="registered card names (name or name@version)")
    base: str | None = Field(None, description="default: the first card's base")
    method: str | None = Field(None, description="mixture | product | proxy | entropy | learned | contrastive; "
                                                 "default: the cards' fitted rule, else mixture")
    weights: list[float] | None = Field(None, description="per-model weights, base first")
    alpha: float | None = Field(None, ge=0, le=10, description="proxy-tuning strength")
    entropy_temperature: float | None = Field(None, gt=0, le=100)
    beta: float | None = Field(None, ge=0, le=10, description="contrastive decoding: amateur penalty (0.5)")
    plausibility: float | None = Field(None, gt=0, le=1, description="contrastive decoding: keep tokens with "
                                                                     "p >= this x max p (0.1)")
    prompt: str | None = Field(None, max_length=20_000)
    prompts: list[str] | None = Field(None, min_length=1, max_length=MAX_PROMPTS)
    messages: list[dict[str, Any]] | None = Field(None, min_length=1)
    max_tokens: int = Field(128, ge=1, le=4096)
    temperature: float = Field(0.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    repetition_penalty: float = Field(1.0, ge=1, le=2)
    no_repeat_ngram: int = Field(0, ge=0, le=16)
    stop: list[str] | str | None = None
    seed: int | None = None
    stream: bool = False

    @model_validator(mode="after")
    def _one_input(self) -> "FusionGenerateRequest":
        given = [name for name in ("prompt", "prompts", "messages") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of prompt, prompts or messages")
        return self

    def sampling(self):
        from rag.runtime.sampling import SamplingOptions

        return SamplingOptions(max_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p,
                               top_k=self.top_k, repetition_penalty=self.repetition_penalty,
                               no_repeat_ngram=self.no_repeat_ngram, stop=self.stop, seed=self.seed)

    def rule(self):
        from api.local_models import FusionRule

        return FusionRule(self.method, self.weights, self.alpha, self.entropy_temperature, self.beta,
                          self.plausibility)


def _http(error: Exception) -> HTTPException:
    return HTTPException(getattr(error, "status", status.HTTP_422_UNPROCESSABLE_CONTENT), str(error))


async def _checked(call, *args):
    """A validation step (base on the allow-list, cards registered) in a worker thread, as a 4xx."""
    from experts.fusion.service import FusionError

    try:
        return await run_in_threadpool(call, *args)
    except FusionError as error:
        raise _http(error) from None


def _invalid(error: ValidationError) -> HTTPException:
    reasons = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, reasons)


def _timeout_error(error: Exception) -> HTTPException:
    return HTTPException(status.HTTP_504_GATEWAY_TIMEOUT, {"stage": "llm", "message": str(error)})


async def _answered(awaitable):
    """A model host's answer, its failures as HTTP errors: an unusable card, rule or prompt is a 4xx,
    time running out 504, no model replica able to take the call 503."""
    from api.local_models import ModelsUnavailable
    from experts.fusion.service import FusionError

    try:
        return await awaitable
    except FusionError as error:
        raise _http(error) from None
    except GenerationTimeout as error:
        raise _timeout_error(error) from None
    except ModelsUnavailable as error:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(error), {"Retry-After": "5"}) from None
    except ValueError as error:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(error)) from None


async def _started(stream):
    """The first item of a host's stream, before any response is sent: a model that cannot be loaded or
    a rule or prompt that cannot be used answers 4xx, not a stream that breaks at once."""
    try:
        return await _answered(anext(stream))
    except HTTPException:
        await stream.aclose()
        raise


@router.post("/generate")
async def generate(body: FusionGenerateRequest, state: ServiceState = Depends(get_state),
                   _: Principal = Depends(get_principal)):
    from api.local_models import PromptJob, fused_ref
    from experts.fusion.service import check_client_base, resolve_cards

    await _checked(check_client_base, body.base)
    cards = await _checked(resolve_cards, body.cards)
    try:
        options = body.sampling()
    except ValidationError as error:
        raise _invalid(error) from None
    prompts = body.prompts if body.prompts is not None else (None if body.prompt is None else [body.prompt])
    job = PromptJob(prompts, body.messages, options, state.settings.llm_timeout_s)
    models = state.backend.models()
    if body.stream:
        events = models.prompt_events(fused_ref(body.base, cards), body.rule(), job)
        summary = await _started(events)
        return envelopes.sse(_generate_events(summary, events))
    return await _answered(models.prompt_result(fused_ref(body.base, cards), body.rule(), job))


async def _generate_events(summary: dict, events):
    try:
        yield envelopes.event(summary)
        async for event in events:
            yield envelopes.event(event)
        yield envelopes.DONE
    except GenerationTimeout as error:
        yield envelopes.error_event("llm", str(error))
    except ValueError as error:
        yield envelopes.error_event("request", str(error))
    finally:
        await events.aclose()  # a client gone stops the generation after its current token


async def chat_completion(body: ChatRequest, state: ServiceState, completion_id: str):
    """`/v1/chat/completions` for a `fusion:<base>+<card>[+<card>]` model, in OpenAI's shapes.

    OpenAI fields (temperature, top_p, max_tokens, stop, seed) map onto fused decoding; Mighty
    extensions may be sent as extra body fields: fusion_method, fusion_weights, fusion_alpha,
    repetition_penalty, no_repeat_ngram.
    """
    from api.local_models import FusionRule, fused_ref
    from experts.fusion.service import model_cards
    from rag.runtime.sampling import SamplingOptions

    extra = body.model_extra or {}
    base, cards = await _checked(model_cards, body.model)
    rule = FusionRule(extra.get("fusion_method"), extra.get("fusion_weights"), extra.get("fusion_alpha"))
    try:
        options = SamplingOptions(
            max_tokens=body.max_completion_tokens or body.max_tokens or state.settings.answer_tokens,
            temperature=body.temperature or 0.0,
            top_p=extra.get("top_p") if extra.get("top_p") is not None else 1.0,
            repetition_penalty=extra.get("repetition_penalty") or 1.0,
            no_repeat_ngram=extra.get("no_repeat_ngram", LOOP_NGRAM), stop=extra.get("stop"), seed=extra.get("seed"))
    except ValidationError as error:
        raise _invalid(error) from None
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    timeout, models = state.settings.llm_timeout_s, state.backend.models()
    if body.stream:
        deltas = models.chat_deltas(fused_ref(base, cards), rule, messages, options, timeout)
        await _started(deltas)  # "": the fused model is loaded and the rule usable
        return envelopes.sse(_chat_chunks(completion_id, body.model, deltas))
    result = await _answered(models.chat(fused_ref(base, cards), rule, messages, options, timeout))
    return envelopes.completion(completion_id, body.model, result.text,
                                envelopes.usage(result.prompt_tokens, result.completion_tokens), result.finish_reason)


async def _chat_chunks(completion_id: str, model: str, deltas):
    def chunk(delta: dict, finish: str | None = None, **extra) -> str:
        return envelopes.chunk(completion_id, model, delta, finish, **extra)

    try:
        yield chunk({"role": "assistant", "content": ""})
        async for item in deltas:
            if isinstance(item, str):
                yield chunk({"content": item})
            else:  # the final Decoded
                yield chunk({}, item.finish_reason, usage=envelopes.usage(item.prompt_tokens, item.completion_tokens))
        yield envelopes.DONE
    except GenerationTimeout as error:
        yield envelopes.error_event("llm", str(error))
    finally:
        await deltas.aclose()
