"""OpenAI-compatible chat completions and model list.

`model` selects the pipeline: `rag:<collection>` answers from that collection with citations (on
the message and on the final streamed chunk, as `citations`); `fusion:<base>+<card>` decodes with
the base and expert cards fused token by token (api.routers.fusion); any other string is a LiteLLM
model called with the messages as given.
"""
from __future__ import annotations

import json
import time
import uuid

from fastapi import APIRouter, Depends, HTTPException, status
from fastapi.concurrency import run_in_threadpool

from api import openai_chat as envelopes
from api.answering import complete, llm_options, prepare, stream_tokens
from api.dependencies import get_principal, get_state
from api.keys import Principal
from api.schemas import ChatRequest
from api.state import ServiceState
from indexes.collection import CollectionNotFound
from rag import cascade_spec, llm
from rag.pipeline import Prepared

router = APIRouter(prefix="/v1", tags=["openai"])
RAG_PREFIX = "rag:"
FUSION_PREFIX = "fusion:"


@router.get("/models")
def models(state: ServiceState = Depends(get_state), _: Principal = Depends(get_principal)) -> dict:
    created = int(time.time())
    ids = [f"{RAG_PREFIX}{name}" for name in state.home.names()] + [state.settings.default_llm]
    return {"object": "list", "data": [{"id": i, "object": "model", "created": created, "owned_by": "mighty"}
                                       for i in dict.fromkeys(ids)]}


@router.post("/chat/completions")
async def chat_completions(body: ChatRequest, state: ServiceState = Depends(get_state),
                           principal: Principal = Depends(get_principal)):
    max_tokens = body.max_completion_tokens or body.max_tokens
    temperature = body.temperature or 0.0
    completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    if body.model.startswith(FUSION_PREFIX):  # token-level fusion of a base with expert cards
        from api.routers.fusion import chat_completion

        return await chat_completion(body, state, completion_id)
    if cascade_spec.is_cascade(body.model):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            "a cascade answers over a collection: set it as the collection's default_llm and ask "
                            "model rag:<collection>, or send it as llm to /v1/query")
    if body.model.startswith(RAG_PREFIX):
        collection = body.model[len(RAG_PREFIX):]
        question = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        if not question.strip():
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "a rag: model needs a non-empty user message")
        try:
            options = llm_options(state, collection, body.llm, principal, max_tokens=max_tokens,
                                  temperature=temperature)
        except CollectionNotFound as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
        pipeline, prepared = await prepare(state, collection, question, body.top_k, "hybrid", None, options,
                                           body.cards)
        history = [m for m in messages[:-1] if m["role"] in ("user", "assistant")]
        prepared.messages = prepared.messages[:1] + history + prepared.messages[1:]
        if body.stream:
            return envelopes.sse(_rag_chunks(completion_id, body.model, pipeline, prepared))
        answer = await complete(pipeline, prepared)
        citations = [c.model_dump() for c in answer.citations]
        usage = envelopes.usage(answer.usage.get("prompt_tokens", 0), answer.usage.get("completion_tokens", 0))
        response = envelopes.completion(completion_id, body.model, answer.answer, usage, citations=citations)
        if answer.cards is not None:
            response["cards"] = answer.cards
        if answer.cascade is not None:
            response["cascade"] = answer.cascade
        return response
    options = llm_options(state, None, body.model, principal, max_tokens=max_tokens, temperature=temperature)
    if body.stream:
        return envelopes.sse(_plain_chunks(completion_id, body.model, options, messages))
    try:
        result = await run_in_threadpool(llm.complete, options, messages)
    except llm.LLMTimeout as exc:
        raise HTTPException(status.HTTP_504_GATEWAY_TIMEOUT, {"stage": "llm", "message": str(exc)}) from None
    except llm.LLMError as exc:
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, {"stage": "llm", "message": str(exc)}) from None
    return envelopes.completion(completion_id, body.model, result.text,
                                envelopes.usage(result.prompt_tokens, result.completion_tokens), result.finish_reason)


async def _rag_chunks(completion_id: str, model: str, pipeline, prepared: Prepared):
    yield envelopes.chunk(completion_id, model, {"role": "assistant", "content": ""})
    collected: list[str] = []
    async for kind, payload in stream_tokens(pipeline, prepared, collected):
        if kind == "error":
            yield envelopes.event({"error": json.loads(payload)})
            return
        yield envelopes.chunk(completion_id, model, {"content": payload})
    answer = await run_in_threadpool(pipeline.finish, prepared, "".join(collected))
    extra = {key: value for key, value in (("cards", answer.cards), ("cascade", answer.cascade)) if value is not None}
    yield envelopes.chunk(completion_id, model, {}, "stop", citations=[c.model_dump() for c in answer.citations], **extra)
    yield envelopes.DONE


async def _plain_chunks(completion_id: str, model: str, options: llm.LLMOptions, messages: list[dict]):
    from fastapi.concurrency import iterate_in_threadpool

    yield envelopes.chunk(completion_id, model, {"role": "assistant", "content": ""})
    try:
        async for delta in iterate_in_threadpool(llm.stream(options, messages)):
            yield envelopes.chunk(completion_id, model, {"content": delta})
    except (llm.LLMTimeout, llm.LLMError) as exc:
        yield envelopes.error_event("llm", str(exc))
        return
    yield envelopes.chunk(completion_id, model, {}, "stop")
    yield envelopes.DONE
