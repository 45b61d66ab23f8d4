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
from dataclasses import dataclass, replace

from fastapi import HTTPException

from api import answering, card_knowledge
from api.keys import Principal
from api.state import ServiceState
from experts.errors import CardNotFound
from experts.routing import CardsChoice
from experts.selectors import SelectorSettings
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
    retrieval: bool = True  # False: no retrieved chunks, a closed-book prompt (the model's own knowledge)
    setting: str | None = None
    selectors: SelectorSettings | None = None  # the card knowledge selectors, as a request may set them


@dataclass(frozen=True)
class Setting:
    """One column of the side-by-side comparison: does the answerer see retrieved chunks, card knowledge?"""

    name: str
    retrieval: bool
    cards: bool


# Knowledge Card's comparison (Feng et al., ICLR 2024) plus retrieval: the answerer alone, with card
# knowledge, with retrieved chunks, with both. The order is the order of the report.
SETTINGS = {s.name: s for s in (Setting("alone", False, False), Setting("card", False, True),
                                Setting("retrieval", True, False), Setting("retrieval+card", True, True))}


@dataclass
class SettingRun:
    setting: Setting
    model: str
    results: list[QuestionResult]


def parse_settings(value: str) -> list[Setting]:
    """`all` or comma-separated names from SETTINGS, in the order given."""
    names = list(SETTINGS) if value.strip() == "all" else [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown or not names:
        raise RunRefused(f"unknown setting(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
                         f"use all or some of: {', '.join(SETTINGS)}")
    return [SETTINGS[n] for n in dict.fromkeys(names)]


def evaluate_settings(state: ServiceState, run: AnswerRun, settings: Sequence[Setting], items: Sequence[QAItem],
                      progress: ProgressSink | None = None,
                      on_result: Callable[[QuestionResult], None] | None = None,
                      interleave: bool = False) -> list[SettingRun]:
    """Every item under every setting, one setting after another with the same answerer and cards.

    Settings with card knowledge need the cards named on the run (or `auto`); each such setting starts
    with an empty knowledge cache, so its latency includes writing the knowledge, as in service.
    `interleave` answers each question under every setting before the next question, so a run cut
    short still compares the settings on the same questions (the knowledge cache is then cleared
    before every card answer instead)."""
    wants_cards = any(s.cards for s in settings)
    if wants_cards and run.cards in (None, "none"):
        raise RunRefused("the card settings need cards: pass --cards NAME[,NAME...] or --cards auto")
    check_cards(state, run.cards if wants_cards else "none")
    variants = [replace(run, retrieval=s.retrieval, cards=run.cards if s.cards else "none", setting=s.name)
                for s in settings]
    if not interleave:
        runs = []
        for setting, variant in zip(settings, variants):
            if setting.cards:
                card_knowledge.knowledge_stage(state).writer.clear()
            model, results = evaluate_answers(state, variant, items, progress, on_result)
            runs.append(SettingRun(setting, model, results))
        return runs
    options = [_options(state, variant) for variant in variants]
    for variant, option in zip(variants, options):
        _warm_up(state, variant, option)
    runs = [SettingRun(setting, option.model, []) for setting, option in zip(settings, options)]
    if progress:
        progress.start(f"answering with {options[0].model} ({len(settings)} settings each)", len(items))
    for item in items:
        for setting_run, variant, option in zip(runs, variants, options):
            if setting_run.setting.cards:
                card_knowledge.knowledge_stage(state).writer.clear()
            result = asyncio.run(_answer(state, variant, option, item))
            setting_run.results.append(result)
            if on_result:
                on_result(result)
        if progress:
            progress.advance(1)
    return runs


def check_cards(state: ServiceState, choice: CardsChoice | None) -> None:
    """Refuse a run naming an unknown card before any model loads (not after the first question)."""
    choice = card_knowledge.resolve_choice(state, choice)
    if choice in ("auto", "none"):
        return
    stage_cards = state.cards
    for name in choice:
        try:
            stage_cards.get(name)
        except (LookupError, CardNotFound):
            raise RunRefused(f"card {name!r} is not registered (or has no active version); "
                             "see mighty cards list") from None


def evaluate_answers(state: ServiceState, run: AnswerRun, items: Sequence[QAItem],
                     progress: ProgressSink | None = None,
                     on_result: Callable[[QuestionResult], None] | None = None) -> tuple[str, list[QuestionResult]]:
    """Warm the model up once (loading is not answer latency), then answer and score each item."""
    options = _options(state, run)
    check_cards(state, run.cards)
    _warm_up(state, run, options)
    results = []
    if progress:
        label = f" ({run.setting})" if run.setting else ""
        progress.start(f"answering with {options.model}{label}", len(items))
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
    choice = card_knowledge.resolve_choice(state, run.cards)
    if choice != "none" and state.cards.active_cards():  # load the router and the card models once
        card_knowledge.knowledge_stage(state).run("warm up", choice, ["warm up"])


async def _answer(state: ServiceState, run: AnswerRun, options: llm.LLMOptions, item: QAItem) -> QuestionResult:
    result = QuestionResult(item.id, item.question, item.doc, list(item.answers), item.title, item.split,
                            run.setting)
    started = time.perf_counter()
    try:
        pipeline, prepared = await answering.prepare(state, run.collection, item.question, run.top_k, "hybrid",
                                                     None, options, run.cards, run.selectors,
                                                     retrieve=run.retrieval)
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
    result.card_knowledge = any(s.kind == "card" for s in prepared.sources)
    encoder = pipeline.retriever.collection.embedder
    hits = prepared.retrieval.hits
    return score(result, [c.id for c in response.citations], [h.id for h in hits], prepared.sources,
                 lambda texts: encoder.encode(list(texts)), cited_titles=[c.title for c in response.citations],
                 retrieved_titles=[h.title for h in hits])


def _detail(exc: HTTPException) -> str:
    detail = exc.detail
    return detail.get("message", str(detail)) if isinstance(detail, dict) else str(detail)
