"""POST /v1/retrieve and POST /v1/query (JSON or server-sent events)."""
from __future__ import annotations

import asyncio
import json

from fastapi import APIRouter, Depends, HTTPException, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from api.answering import complete, llm_options, prepare, stream_tokens
from api.dependencies import get_principal, get_state
from api.keys import Principal
from api.metrics import STAGE_SECONDS
from api.schemas import QueryRequest
from api.state import ServiceState
from indexes.collection import CollectionNotFound
from rag.pipeline import AnswerResponse
from rag.schemas import RetrievalRequest, RetrievalResult

router = APIRouter(prefix="/v1", tags=["retrieval"])


@router.post("/retrieve")
async def retrieve(body: RetrievalRequest, state: ServiceState = Depends(get_state),
                   _: Principal = Depends(get_principal)) -> RetrievalResult:
    if not body.collection:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "'collection' is required")
    if body.top_k > state.settings.max_top_k:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"top_k must be at most {state.settings.max_top_k}")
    if len(body.query) > state.settings.max_query_chars:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            f"query is {len(body.query)} characters; the limit is {state.settings.max_query_chars}")
    try:
        retriever = state.retriever(body.collection)
    except CollectionNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    timeout = state.settings.retrieval_timeout_s
    try:
        with STAGE_SECONDS.labels("retrieve").time():
            return await asyncio.wait_for(run_in_threadpool(retriever.search, body), timeout)
    except TimeoutError:
        raise HTTPException(status.HTTP_504_GATEWAY_TIMEOUT,
                            {"stage": "retrieval", "message": f"retrieval took longer than {timeout:g}s"}) from None
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None


@router.post("/query", response_model=AnswerResponse)
async def query(body: QueryRequest, state: ServiceState = Depends(get_state),
                principal: Principal = Depends(get_principal)):
    try:
        options = llm_options(state, body.collection, body.llm, principal, fallbacks=body.fallbacks,
                              api_base=body.api_base, api_key=body.api_key, max_tokens=body.max_tokens, temperature=body.temperature,
                              timeout_s=body.timeout_s)
    except CollectionNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    pipeline, prepared = await prepare(state, body.collection, body.query, body.top_k, body.mode, body.filters, options)
    if not body.stream:
        return await complete(pipeline, prepared)

    async def events():
        collected: list[str] = []
        async for kind, payload in stream_tokens(pipeline, prepared, collected):
            if kind == "error":
                yield f"event: error\ndata: {payload}\n\n"
                return
            yield f"event: token\ndata: {json.dumps({'text': payload})}\n\n"
        response = await run_in_threadpool(pipeline.finish, prepared, "".join(collected))
        yield f"event: citations\ndata: {response.model_dump_json()}\n\n"
        yield "event: done\ndata: {}\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
