"""POST /v1/retrieve and POST /v1/query (JSON or server-sent events)."""
from __future__ import annotations

import json

from fastapi import APIRouter, Depends, HTTPException, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from api.answering import check_limits, complete, llm_options, prepare, retrieve_in_time, stream_tokens
from api.dependencies import get_principal, get_state
from api.keys import Principal
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
    check_limits(state, body.query, body.top_k)
    try:
        retriever = state.retriever(body.collection)
    except CollectionNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    return await retrieve_in_time(state, retriever.search, body)


@router.post("/query", response_model=AnswerResponse)
async def query(body: QueryRequest, state: ServiceState = Depends(get_state),
                principal: Principal = Depends(get_principal)):
    try:
        options = llm_options(state, body.collection, body.llm, principal, fallbacks=body.fallbacks,
                              api_base=body.api_base, api_key=body.api_key, max_tokens=body.max_tokens, temperature=body.temperature,
                              timeout_s=body.timeout_s)
    except CollectionNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    pipeline, prepared = await prepare(state, body.collection, body.query, body.top_k, body.mode, body.filters, options,
                                       body.cards, body.card_selectors)
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
