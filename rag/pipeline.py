"""The answer pipeline: retrieve -> assemble sources -> prompt -> LLM -> citations.

Stages are separate methods so the service can run each under its own timeout (and report which
stage timed out) and stream tokens between `prepare` and `finish`.
"""
from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

from pydantic import BaseModel, Field

from rag import cascade, cascade_spec, llm
from rag.citations import Citation, attribute
from rag.context import Source, assemble
from rag.prompts import answer_messages
from rag.retriever import Retriever
from rag.schemas import Filters, Mode, RetrievalRequest, RetrievalResult


class CitationOut(BaseModel):
    number: int
    id: str
    title: str
    span: tuple[int, int]
    score: float
    text: str
    kind: str = "chunk"
    post_hoc: bool = Field(False, description="attributed by similarity, not written by the model")


class AnswerResponse(BaseModel):
    answer: str
    citations: list[CitationOut]
    sources: list[CitationOut] = Field(description="every source the model was shown")
    model: str
    collection: str
    generation: int
    usage: dict[str, int] = Field(default_factory=dict)
    cards: dict | None = Field(None, description="expert cards considered for this answer, why, and what "
                                                 "their selectors kept or dropped")
    timings: dict[str, float] = Field(default_factory=dict, description="milliseconds per stage")
    cascade: dict | None = Field(None, description="cascade models only: policy, threshold, confidence, which "
                                                   "model answered, and the latency and tokens of each stage")


@dataclass
class Prepared:
    retrieval: RetrievalResult
    sources: list[Source]
    messages: list[dict]
    options: llm.LLMOptions
    timings: dict[str, float] = field(default_factory=dict)
    cards: dict | None = None
    cascade: cascade.CascadeReport | None = None  # filled in when a cascade model generates


class AnswerPipeline:
    def __init__(self, retriever: Retriever, context_tokens: int = 1500, min_relative_score: float = 0.0) -> None:
        self.retriever = retriever
        self.context_tokens = context_tokens
        self.min_relative_score = min_relative_score

    def retrieve(self, query: str, top_k: int, mode: Mode = "hybrid", filters: Filters | None = None) -> RetrievalResult:
        return self.retriever.search(RetrievalRequest(query=query, top_k=top_k, mode=mode, filters=filters))

    def count_tokens(self, text: str) -> int:
        return len(self.retriever.collection.chunker.tokenizer.encode(text, add_special_tokens=False).ids)

    def prepare(self, query: str, retrieval: RetrievalResult, options: llm.LLMOptions,
                knowledge: Sequence[Source] = (), cards: dict | None = None, closed_book: bool = False) -> Prepared:
        """Retrieved chunks fill the context budget and are numbered first; expert-card knowledge
        comes after them, on top of the budget (each card's share is already bounded by the pruning
        selector's `prune_tokens`). Why not take the knowledge out of the chunks' budget: a card's
        background is unverified next to the documents, and it should never push the passage that
        holds the answer out of the prompt.

        `closed_book` asks the model to answer from its own knowledge (plus any card knowledge)."""
        started = time.perf_counter()
        sources = assemble(retrieval.hits, self.context_tokens, self.count_tokens, self.min_relative_score)
        sources += [replace(s, number=len(sources) + i + 1) for i, s in enumerate(knowledge)]
        prepared = Prepared(retrieval, sources, answer_messages(query, sources, closed_book), options,
                            cards=cards)
        prepared.timings = {"retrieve": retrieval.timings_ms.get("total", 0.0), "assemble": _ms(started)}
        return prepared

    def generate(self, prepared: Prepared) -> llm.Completion:
        started = time.perf_counter()
        if cascade_spec.is_cascade(prepared.options.model):
            completion = cascade.run(cascade_spec.parse(prepared.options.model), prepared, self.retriever.collection)
        else:
            completion = llm.complete(prepared.options, prepared.messages)
        prepared.timings["llm"] = _ms(started)
        return completion

    def stream(self, prepared: Prepared, usage: dict[str, int] | None = None) -> Iterator[str]:
        started = time.perf_counter()
        if cascade_spec.is_cascade(prepared.options.model):
            yield from cascade.stream(cascade_spec.parse(prepared.options.model), prepared,
                                      self.retriever.collection, usage)
        else:
            yield from llm.stream(prepared.options, prepared.messages, usage)
        prepared.timings["llm"] = _ms(started)

    def finish(self, prepared: Prepared, text: str, completion: llm.Completion | None = None) -> AnswerResponse:
        started = time.perf_counter()
        encoder = self.retriever.collection.embedder
        answer, citations = attribute(text, prepared.sources, lambda texts: encoder.encode(list(texts)))
        prepared.timings["citations"] = _ms(started)
        prepared.timings["total"] = round(sum(prepared.timings.values()), 3)
        usage = {}
        if completion is not None:
            usage = {"prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens}
        model = completion.model if completion else prepared.options.model
        report = prepared.cascade.as_dict() if prepared.cascade is not None else None
        if report is not None:
            model = report["answered_by"] or model
        return AnswerResponse(
            answer=answer, citations=[_citation(c) for c in citations],
            sources=[_citation(Citation(s)) for s in prepared.sources], model=model,
            collection=prepared.retrieval.collection, generation=prepared.retrieval.generation,
            usage=usage, cards=prepared.cards, timings=prepared.timings, cascade=report)

    def answer(self, query: str, options: llm.LLMOptions, top_k: int = 5, mode: Mode = "hybrid",
               filters: Filters | None = None) -> AnswerResponse:
        prepared = self.prepare(query, self.retrieve(query, top_k, mode, filters), options)
        completion = self.generate(prepared)
        return self.finish(prepared, completion.text, completion)


def _citation(citation: Citation) -> CitationOut:
    s = citation.source
    return CitationOut(number=s.number, id=s.id, title=s.title, span=s.span, score=round(s.score, 6), text=s.text,
                       kind=s.kind, post_hoc=citation.post_hoc)


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
