"""Shared by /v1/query and /v1/chat/completions: run the answer pipeline under stage timeouts."""
from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

from fastapi import HTTPException, status
from fastapi.concurrency import iterate_in_threadpool, run_in_threadpool

from api import card_knowledge
from api.keys import Principal
from api.metrics import CASCADE_ANSWERS, CASCADE_ESCALATIONS, STAGE_SECONDS
from api.state import ServiceState, runs_locally
from indexes.collection import CollectionNotFound
from rag import cascade_router, cascade_spec, llm
from rag.pipeline import AnswerPipeline, AnswerResponse, Prepared
from experts.routing import CardsChoice
from experts.selectors import SelectorSettings
from rag.schemas import Filters, Mode, RetrievalResult

T = TypeVar("T")


def llm_options(state: ServiceState, collection: str | None, model: str | None, principal: Principal, *,
                fallbacks: list[str] | None = None, api_base: str | None = None, api_key: str | None = None,
                max_tokens: int | None = None,
                temperature: float = 0.0, timeout_s: float | None = None) -> llm.LLMOptions:
    if (api_base or api_key) and not principal.is_admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "only admin keys may set api_base or api_key on a request")
    default, default_fallbacks, default_timeout = None, [], None
    if collection:  # request settings win over the collection's, which win over the server's
        config = state.collection(collection).config
        default, default_fallbacks, default_timeout = config.default_llm, config.llm_fallbacks, config.llm_timeout_s
    model = model or default or state.settings.default_llm
    answer_tokens = state.settings.local_answer_tokens if runs_locally(model) else state.settings.answer_tokens
    options = llm.LLMOptions(model=model, api_base=api_base, api_key=api_key,
                             fallbacks=fallbacks or default_fallbacks,
                             timeout_s=timeout_s or default_timeout or state.settings.llm_timeout_s,
                             retries=state.settings.llm_retries, max_tokens=max_tokens or answer_tokens,
                             temperature=temperature)
    try:
        for name in (options.model, *options.fallbacks):
            llm.check_model(name, options.api_base)
    except llm.LLMModelError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    if collection and cascade_spec.is_cascade(options.model) and cascade_spec.parse(options.model).policy == "router":
        try:  # a router policy needs the collection's trained router: refuse before any retrieval
            cascade_router.load(state.collection(collection).folder)
        except cascade_router.RouterError as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"collection {collection!r}: {exc}") from None
    return options


def count_cascade(prepared: Prepared) -> None:
    """Prometheus: cascade answers per collection and who gave them, and the escalations."""
    report = prepared.cascade
    if report is None or not report.answered_by:
        return
    collection = prepared.retrieval.collection
    CASCADE_ANSWERS.labels(collection, report.policy, "large" if report.escalated else "small").inc()
    if report.escalated:
        CASCADE_ESCALATIONS.labels(collection, report.policy).inc()


def check_limits(state: ServiceState, query: str, top_k: int) -> None:
    """The server's own bounds, which may be tighter than the schema's."""
    if len(query) > state.settings.max_query_chars:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            f"query is {len(query)} characters; the limit is {state.settings.max_query_chars}")
    if top_k > state.settings.max_top_k:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"top_k must be at most {state.settings.max_top_k}")


async def retrieve_in_time(state: ServiceState, search: Callable[..., T], *args) -> T:
    """Run a retrieval off the event loop under the retrieval timeout (504 naming the stage)."""
    timeout = state.settings.retrieval_timeout_s
    try:
        with STAGE_SECONDS.labels("retrieve").time():
            return await asyncio.wait_for(run_in_threadpool(search, *args), timeout)
    except TimeoutError:
        raise HTTPException(status.HTTP_504_GATEWAY_TIMEOUT,
                            {"stage": "retrieval", "message": f"retrieval took longer than {timeout:g}s"}) from None
    except ValueError as exc:  # a filter the store cannot express
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None


async def prepare(state: ServiceState, collection: str, query: str, top_k: int, mode: Mode,
                  filters: Filters | None, options: llm.LLMOptions, cards: CardsChoice | None = None,
                  selectors: SelectorSettings | None = None, retrieve: bool = True) -> tuple[AnswerPipeline, Prepared]:
    """Retrieve, let expert cards add checked knowledge, and assemble the prompt.

    `retrieve=False` (answer evaluations comparing settings) shows the model no retrieved chunks and
    asks it to answer from its own knowledge plus any card knowledge (a closed-book prompt)."""
    check_limits(state, query, top_k)
    try:
        pipeline = state.pipeline(collection, options.model)
    except CollectionNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    if retrieve:
        retrieval = await retrieve_in_time(state, pipeline.retrieve, query, top_k, mode, filters)
    else:
        retrieval = RetrievalResult(query=query, collection=collection, mode=mode, generation=0, hits=[])
    knowledge = await card_knowledge.gather(state, query, cards, retrieval, selectors)
    sources, report = (knowledge.sources(), knowledge.report()) if knowledge else ([], None)
    return pipeline, await run_in_threadpool(pipeline.prepare, query, retrieval, options, sources, report,
                                             not retrieve)


async def complete(pipeline: AnswerPipeline, prepared: Prepared) -> AnswerResponse:
    try:
        with STAGE_SECONDS.labels("llm").time():
            completion = await asyncio.wait_for(run_in_threadpool(pipeline.generate, prepared),
                                                _deadline(prepared.options))
    except (TimeoutError, llm.LLMTimeout):
        raise HTTPException(status.HTTP_504_GATEWAY_TIMEOUT,
                            {"stage": "llm", "message": f"model {prepared.options.model!r} took longer than "
                                                        f"{prepared.options.timeout_s:g}s"}) from None
    except llm.LLMModelError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, {"stage": "llm", "message": str(exc)}) from None
    except llm.LLMError as exc:
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, {"stage": "llm", "message": str(exc)}) from None
    except cascade_router.RouterError as exc:  # the router file changed after the request was checked
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, {"stage": "router", "message": str(exc)}) from None
    count_cascade(prepared)
    return await run_in_threadpool(pipeline.finish, prepared, completion.text, completion)


def _deadline(options: llm.LLMOptions) -> float:
    """Seconds a whole generation may take: each model call has the timeout; a cascade makes up to
    three in a row (small answer, its verification, large answer)."""
    return options.timeout_s * (3 if cascade_spec.is_cascade(options.model) else 1) + 5


async def stream_tokens(pipeline: AnswerPipeline, prepared: Prepared,
                        collected: list[str]) -> AsyncIterator[tuple[str, str]]:
    """('token', text) events, then ('error', json) if the model failed midway."""
    try:
        async for delta in iterate_in_threadpool(pipeline.stream(prepared)):
            collected.append(delta)
            yield "token", delta
    except (llm.LLMTimeout, llm.LLMError) as exc:
        yield "error", json.dumps({"stage": "llm", "message": str(exc)})
        return
    except cascade_router.RouterError as exc:
        yield "error", json.dumps({"stage": "router", "message": str(exc)})
        return
    count_cascade(prepared)
