"""`mighty eval answers --llm cascade:...`: one pass that makes every threshold's outcome computable.

Each question is prepared once through the service's own stages (option resolution, retrieval,
cards, prompt assembly with the cascade's budgets), then the small model answers (streamed, as the
service would), every policy that can run scores that answer (verify with the spec's k, faithfulness
with the collection embedder, the router when the collection has one), and the large model answers
the same prompt. Both answers are scored; `rag.cascade_curve` then sweeps thresholds offline.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from fastapi import HTTPException

from api import answering
from api.answer_runs import AnswerRun, RunRefused, _detail, _options
from api.state import ServiceState
from indexes.writer import ProgressSink
from rag import cascade, cascade_router, cascade_spec, llm
from rag.answer_eval import QAItem, contains_answer, token_f1
from rag.cascade_curve import CascadeRecord, Side
from rag.citations import attribute
from rag.prompts import answer_messages
from rag.schemas import RetrievalRequest


def evaluate_cascade(state: ServiceState, run: AnswerRun, items: Sequence[QAItem],
                     progress: ProgressSink | None = None,
                     on_record: Callable[[CascadeRecord], None] | None = None) -> tuple[str, list[CascadeRecord]]:
    options = _options(state, run)
    spec = cascade_spec.parse(options.model)
    has_router = _has_router(state, run.collection)
    state.retriever(run.collection).search(RetrievalRequest(query="warm up", top_k=1))
    for side in (spec.small, spec.large):  # loading a model is not answer latency
        try:
            llm.complete(options.model_copy(update={"model": side, "max_tokens": 1, "fallbacks": []}),
                         answer_messages("warm up", []))
        except (llm.LLMError, llm.LLMTimeout) as exc:
            raise RunRefused(f"model {side!r} does not answer: {exc}") from None
    if progress:
        progress.start(f"cascade {spec.small} > {spec.large}", len(items))
    records = []
    for item in items:
        record = asyncio.run(_question(state, run, options, spec, has_router, item))
        records.append(record)
        if on_record:
            on_record(record)
        if progress:
            progress.advance(1)
    return options.model, records


def _has_router(state: ServiceState, collection: str) -> bool:
    try:
        cascade_router.load(state.collection(collection).folder)
        return True
    except cascade_router.RouterError:
        return False


async def _question(state: ServiceState, run: AnswerRun, options: llm.LLMOptions, spec: cascade_spec.CascadeSpec,
                    has_router: bool, item: QAItem) -> CascadeRecord:
    record = CascadeRecord(item.id, item.question, list(item.answers), options.model, spec.small, spec.large)
    started = time.perf_counter()
    try:
        pipeline, prepared = await answering.prepare(state, run.collection, item.question, run.top_k, "hybrid",
                                                     None, options, run.cards)
    except HTTPException as exc:
        if exc.status_code < 500:
            raise RunRefused(_detail(exc)) from None
        record.small.error = record.large.error = _detail(exc)
        return record
    record.prepare_ms = round((time.perf_counter() - started) * 1000, 1)
    collection = pipeline.retriever.collection
    encode = (lambda texts: collection.embedder.encode(list(texts)))
    record.small, raw = _side(cascade.stage_options(options, spec, False), prepared.messages, item, prepared.sources,
                              encode)
    if record.small.error is None:
        # both judge the model's own text, as served (citation markers are added after the cascade
        # decides), which is also what the small model's KV cache holds for verify to continue from
        judged = [("faithfulness", lambda: cascade.faithfulness_confidence(raw, prepared.sources, encode)),
                  ("verify", lambda: _verify(record, cascade.stage_options(options, spec, False),
                                             prepared.messages, raw, spec.samples))]
        for policy, score in judged:
            try:
                record.confidence[policy], stage = score()
                record.overhead_ms[policy] = stage.latency_ms
            except (llm.LLMError, llm.LLMTimeout) as exc:
                record.small.error = f"{policy}: {exc}"
    if has_router:
        record.confidence["router"], stage = cascade.router_confidence(collection, item.question)
        record.overhead_ms["router"] = stage.latency_ms
    record.large, _ = _side(cascade.stage_options(options, spec, True), prepared.messages, item, prepared.sources,
                            encode)
    return record


def _verify(record: CascadeRecord, small: llm.LLMOptions, messages: list[dict], answer: str,
            samples: int) -> tuple[float, cascade.Stage]:
    """verify's confidence, with how it was read kept on the record (per ordering when by logits, so
    a curve for fewer orderings can be computed from the same pass)."""
    confidence, stage, found = cascade.verify_detail(small, messages, answer, samples)
    record.verify = {"method": found.method, "per_ordering": [round(v, 6) for v in found.per_ordering],
                     "ordering_ms": found.ordering_ms, "prompt_tokens": found.prompt_tokens,
                     "cached_tokens": found.cached_tokens, "mass": found.mass}
    return confidence, stage


def _side(options: llm.LLMOptions, messages: list[dict], item: QAItem, sources, encode) -> tuple[Side, str]:
    """One model's streamed answer, timed and scored (after post-hoc citation markers, as served), and
    the model's own text."""
    stages: list[cascade.Stage] = []
    side = Side()
    try:
        text = "".join(cascade.stream_stage(options, messages, "answer", stages))
    except (llm.LLMError, llm.LLMTimeout) as exc:
        side.error = str(exc)
        return side, ""
    stage = stages[-1]
    side.answer, _ = attribute(text, sources, encode)
    side.correct = contains_answer(side.answer, item.answers)
    side.f1 = round(token_f1(side.answer, item.answers), 4)
    side.latency_ms, side.prompt_tokens, side.completion_tokens = stage.latency_ms, stage.prompt_tokens, \
        stage.completion_tokens
    return side, text
