"""Answer a QA set through the service's own stages and score every answer (`mighty eval answers`).

Each question goes through exactly what a streamed `/v1/query` does: the same option resolution,
retrieval under its timeout, expert-card knowledge, prompt assembly with the in-process budget,
streamed generation and citation attribution. Only the HTTP hop is skipped, so the figures measure
the service's answers, not a re-implementation of them.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fastapi import HTTPException

from api import answering
from api.keys import Principal
from api.state import ServiceState
from experts.routing import CardsChoice
from indexes.collection import CollectionNotFound
from indexes.writer import ProgressSink
from rag import llm
from rag.answer_eval import QAItem, QuestionResult, score
from rag.prompts import answer_messages
from rag.schemas import RetrievalRequest

_EVALUATOR = Principal("eval", "admin")  # a local operator: may point the run at any api_base


class RunRefused(ValueError):
    """The run cannot start or go on: unknown collection or card, a bound exceeded (the 4xx cases)."""


@dataclass(frozen=True)
class AnswerRun:
    collection: str
    model: str | None = None
    cards: CardsChoice | None = None
    top_k: int = 5
    api_base: str | None = None
    api_key: str | None = None
    max_tokens: int | None = None


def evaluate_answers(state: ServiceState, run: AnswerRun, items: Sequence[QAItem],
                     progress: ProgressSink | None = None,
                     on_result: Callable[[QuestionResult], None] | None = None) -> tuple[str, list[QuestionResult]]:
    """Warm the model up once (loading is not answer latency), then answer and score each item."""
    options = _options(state, run)
    _warm_up(state, run, options)
    results = []
    if progress:
        progress.start(f"answering with {options.model}", len(items))
    for item in items:
        result = asyncio.run(_answer(state, run, options, item))
        results.append(result)
        if on_result:
            on_result(result)
        if progress:
            progress.advance(1)
    return options.model, results


def _options(state: ServiceState, run: AnswerRun) -> llm.LLMOptions:
    try:
        return answering.llm_options(state, run.collection, run.model, _EVALUATOR, api_base=run.api_base,
                                     api_key=run.api_key, max_tokens=run.max_tokens)
    except CollectionNotFound as exc:
        raise RunRefused(str(exc)) from None
    except HTTPException as exc:  # a model string (or cascade) the service would refuse with 4xx
        raise RunRefused(_detail(exc)) from None


def _warm_up(state: ServiceState, run: AnswerRun, options: llm.LLMOptions) -> None:
    """Load the embedder and the model, and let a local runtime cache the fixed system prompt."""
    state.retriever(run.collection).search(RetrievalRequest(query="warm up", top_k=1))
    try:
        llm.complete(options.model_copy(update={"max_tokens": 1}), answer_messages("warm up", []))
    except (llm.LLMError, llm.LLMTimeout) as exc:
        raise RunRefused(f"the model does not answer: {exc}") from None


async def _answer(state: ServiceState, run: AnswerRun, options: llm.LLMOptions, item: QAItem) -> QuestionResult:
    result = QuestionResult(item.id, item.question, item.doc, list(item.answers))
    started = time.perf_counter()
    try:
        pipeline, prepared = await answering.prepare(state, run.collection, item.question, run.top_k, "hybrid",
                                                     None, options, run.cards)
    except HTTPException as exc:
        if exc.status_code < 500:
            raise RunRefused(_detail(exc)) from None
        result.error = _detail(exc)
        return result
    usage: dict[str, int] = {}
    pieces: list[str] = []
    generation_started, first = time.perf_counter(), None
    try:
        for delta in pipeline.stream(prepared, usage):
            if first is None:
                first = time.perf_counter()
            pieces.append(delta)
    except (llm.LLMError, llm.LLMTimeout) as exc:
        result.error = str(exc)
    ended = time.perf_counter()
    response = pipeline.finish(prepared, "".join(pieces))
    result.answer = response.answer
    result.latency_ms = round((time.perf_counter() - started) * 1000, 1)
    result.prompt_tokens = usage.get("prompt_tokens", 0)
    result.completion_tokens = usage.get("completion_tokens", 0)
    if first is not None:
        result.first_token_ms = round((first - started) * 1000, 1)
        prefill = first - generation_started  # the prompt is read before the first token appears
        if result.prompt_tokens and prefill > 0:
            result.prompt_tokens_per_s = round(result.prompt_tokens / prefill, 1)
        if result.completion_tokens > 1 and ended > first:
            result.generation_tokens_per_s = round((result.completion_tokens - 1) / (ended - first), 1)
    encoder = pipeline.retriever.collection.embedder
    return score(result, [c.id for c in response.citations], [h.id for h in prepared.retrieval.hits],
                 prepared.sources, lambda texts: encoder.encode(list(texts)))


def _detail(exc: HTTPException) -> str:
    detail = exc.detail
    return detail.get("message", str(detail)) if isinstance(detail, dict) else str(detail)
