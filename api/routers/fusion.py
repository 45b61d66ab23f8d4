"""Fused generation over HTTP: `POST /v1/fusion/generate`, and `fusion:` models in chat completions.

Generation is CPU-bound and serialised per fused model, so it runs in worker threads; streaming
sends tokens as server-sent events as soon as they are settled. A client that goes away cancels its
generation after the current token.
"""
from __future__ import annotations

import asyncio
import threading
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, status
from fastapi.concurrency import iterate_in_threadpool, run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from api import openai_chat as envelopes
from api.dependencies import get_principal, get_state
from api.keys import Principal
from api.schemas import ChatRequest
from api.state import ServiceState
from rag.runtime import LOOP_NGRAM, GenerationTimeout
from rag.runtime.decode import Deadline

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


def _http(error: Exception) -> HTTPException:
    return HTTPException(getattr(error, "status", status.HTTP_422_UNPROCESSABLE_CONTENT), str(error))


async def _decoder(loader, *args, **kwargs):
    from experts.fusion.service import FusionError

    try:
        return await run_in_threadpool(loader, *args, **kwargs)  # first use loads weights: seconds
    except FusionError as error:
        raise _http(error) from None


def _invalid(error: ValidationError) -> HTTPException:
    reasons = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, reasons)


def _timeout_error(error: Exception) -> HTTPException:
    return HTTPException(status.HTTP_504_GATEWAY_TIMEOUT, {"stage": "llm", "message": str(error)})


@router.post("/generate")
async def generate(body: FusionGenerateRequest, state: ServiceState = Depends(get_state),
                   _: Principal = Depends(get_principal)):
    from experts.fusion.evaluate import describe
    from experts.fusion.service import check_client_base, load_decoder, resolve_cards

    await _decoder(check_client_base, body.base)
    cards = await run_in_threadpool(_cards_or_http, resolve_cards, body.cards)
    decoder = await _decoder(load_decoder, body.base, cards, body.method, body.weights, body.alpha,
                             body.entropy_temperature, body.beta, body.plausibility)
    try:
        options = body.sampling()
    except ValidationError as error:
        raise _invalid(error) from None
    if body.messages is not None:
        prompts = [decoder.encode_chat(body.messages)]
    else:
        prompts = [decoder.encode_text(p) for p in (body.prompts or [body.prompt])]
    if any(not p for p in prompts):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "a prompt is empty")
    summary = {"model": decoder.model.describe(), "method": decoder.params.method,
               "parameters": describe(decoder.params), "vocabulary": decoder.model.vocab.describe()}
    timeout = state.settings.llm_timeout_s
    if body.stream:
        return envelopes.sse(_generate_events(decoder, prompts, options, summary, timeout))
    cancel = threading.Event()
    try:
        results = await asyncio.wait_for(run_in_threadpool(decoder.generate, prompts, options, cancel), timeout)
    except TimeoutError:
        cancel.set()
        raise _timeout_error(TimeoutError(f"fused model {summary['model']} took longer than {timeout:g}s")) from None
    except ValueError as error:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(error)) from None
    return {**summary, **_outcome(results, decoder)}


def _cards_or_http(resolve, names):
    from experts.fusion.service import FusionError

    try:
        return resolve(names)
    except FusionError as error:
        raise _http(error) from None


def _outcome(results, decoder) -> dict:
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


async def _generate_events(decoder, prompts, options, summary: dict, timeout: float):
    cancel = threading.Event()
    deadline = Deadline(cancel, timeout)
    results: list = []
    try:
        yield envelopes.event(summary)
        async for index, delta in iterate_in_threadpool(decoder.stream(prompts, options, results, cancel)):
            yield envelopes.event({"index": index, "delta": delta})
        deadline.close(summary["model"], timeout)
        yield envelopes.event(_outcome(results, decoder))
        yield envelopes.DONE
    except GenerationTimeout as error:
        yield envelopes.error_event("llm", str(error))
    except ValueError as error:
        yield envelopes.error_event("request", str(error))
    finally:
        cancel.set()




async def chat_completion(body: ChatRequest, state: ServiceState, completion_id: str):
    """`/v1/chat/completions` for a `fusion:<base>+<card>[+<card>]` model, in OpenAI's shapes.

    OpenAI fields (temperature, top_p, max_tokens, stop, seed) map onto fused decoding; Mighty
    extensions may be sent as extra body fields: fusion_method, fusion_weights, fusion_alpha,
    repetition_penalty, no_repeat_ngram.
    """
    from rag.runtime.sampling import SamplingOptions
    from experts.fusion.service import chat_generation, chat_stream, decoder_for_model

    extra = body.model_extra or {}
    decoder = await _decoder(decoder_for_model, body.model, extra.get("fusion_method"), extra.get("fusion_weights"),
                             extra.get("fusion_alpha"))
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
    timeout = state.settings.llm_timeout_s
    if body.stream:
        return envelopes.sse(_chat_chunks(completion_id, body.model, decoder, messages, options, timeout, chat_stream))
    try:
        result = await run_in_threadpool(chat_generation, decoder, messages, options, timeout)
    except GenerationTimeout as error:
        raise _timeout_error(error) from None
    return envelopes.completion(completion_id, body.model, result.text,
                                envelopes.usage(result.prompt_tokens, result.completion_tokens), result.finish_reason)


async def _chat_chunks(completion_id: str, model: str, decoder, messages, options, timeout: float, chat_stream):
    def chunk(delta: dict, finish: str | None = None, **extra) -> str:
        return envelopes.chunk(completion_id, model, delta, finish, **extra)

    cancel = threading.Event()
    results: list = []
    try:
        yield chunk({"role": "assistant", "content": ""})
        async for delta in iterate_in_threadpool(chat_stream(decoder, messages, options, timeout, cancel, results)):
            yield chunk({"content": delta})
        final = results[0]
        yield chunk({}, final.finish_reason, usage=envelopes.usage(final.prompt_tokens, final.completion_tokens))
        yield envelopes.DONE
    except GenerationTimeout as error:
        yield envelopes.error_event("llm", str(error))
    finally:
        cancel.set()
