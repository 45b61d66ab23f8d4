"""Model cascades: the small model answers first and the large one only when the small one is unsure.

One prepared prompt (same sources, same messages) feeds both models, so a cascade changes who
answers, never what they are shown. The confidence that decides comes from one of three policies:

- `verify` (AutoMix, Madaan et al. 2023): the small model is asked, with a few worked examples,
  whether its own answer is supported by the sources (`rag.cascade_verify`). A local model gives
  P("yes") / (P("yes") + P("no")) from one forward pass (mean over k orderings of the examples);
  a model behind an API gives the share of "yes" among k sampled verdicts. Following the answer
  turn, the request reuses the answer prompt's KV cache on the local runtime.
- `faithfulness`: the share of answer sentences supported by some retrieved source, by the embedding
  measure `mighty eval answers` reports (there only against the sources a sentence cites).
- `router` (RouteLLM, Ong et al. 2024): a logistic regression on the query embedding predicts whether
  the small model will be right; no small-model call is made when it says escalate.

An answer in which the small model says it does not know has confidence 0 under verify and
faithfulness: abstaining is the clearest signal that the larger model should try.

Streaming never shows an answer that is later replaced: under verify and faithfulness the small
answer is generated whole, judged, then sent (or the large model's answer is streamed instead);
under router the chosen model streams directly.
"""
from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from rag import cascade_router, cascade_verify, llm
from rag.answer_eval import SUPPORT_THRESHOLD, strip_markers
from rag.cascade_spec import CascadeSpec, Policy
from rag.citations import split_sentences
from rag.context import Source


class Prepared(Protocol):
    """What a cascade needs of `rag.pipeline.Prepared` (named here so the pipeline, which calls the
    cascade, is not imported back by it)."""

    options: llm.LLMOptions
    messages: list[dict]
    sources: list[Source]
    retrieval: Any  # rag.schemas.RetrievalResult: its query feeds the router
    cascade: Any  # receives the CascadeReport

_ABSTAIN = re.compile(r"\b(do not|don't|does not|doesn't|cannot|can't|unable to) (know|find|say|tell|determine|"
                      r"contain|mention|provide|answer)\b|\bnot (mentioned|stated|specified|provided)\b",
                      re.IGNORECASE)


@dataclass
class Stage:
    """One step of a cascade: which model or scorer ran, for how long, and the tokens it used."""

    role: str  # small | verify | faithfulness | router | large
    model: str
    latency_ms: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens a local model took from its KV cache instead of reading again
    method: str | None = None  # verify: "logits" (P(yes) from one pass), "samples" or "abstained"


@dataclass
class CascadeReport:
    policy: Policy
    threshold: float
    small: str
    large: str
    confidence: float | None = None
    answered_by: str = ""
    escalated: bool = False
    stages: list[Stage] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        report = asdict(self)
        report["confidence"] = None if self.confidence is None else round(self.confidence, 4)
        return report


def abstains(answer: str) -> bool:
    return not answer.strip() or bool(_ABSTAIN.search(answer))


def stage_options(options: llm.LLMOptions, spec: CascadeSpec, large: bool) -> llm.LLMOptions:
    """The request's options for one side; fallbacks apply to the large model only."""
    return options.model_copy(update={"model": spec.large if large else spec.small,
                                      "fallbacks": options.fallbacks if large else []})


def answer_once(options: llm.LLMOptions, messages: list[dict], role: str) -> tuple[llm.Completion, Stage]:
    started = time.perf_counter()
    completion = llm.complete(options, messages)
    return completion, Stage(role, options.model, _ms(started), completion.prompt_tokens, completion.completion_tokens)


def stream_stage(options: llm.LLMOptions, messages: list[dict], role: str, stages: list[Stage],
                 usage: dict[str, int] | None = None) -> Iterator[str]:
    """Deltas of one model; its Stage is appended once the stream ends."""
    counted: dict[str, int] = {}
    started = time.perf_counter()
    yield from llm.stream(options, messages, counted)
    stages.append(Stage(role, options.model, _ms(started), counted.get("prompt_tokens", 0),
                        counted.get("completion_tokens", 0)))
    if usage is not None:
        usage.update(counted)


def verify_confidence(small: llm.LLMOptions, messages: list[dict], answer: str,
                      samples: int) -> tuple[float, Stage]:
    """The small model's own confidence in its answer (`rag.cascade_verify`): P(yes) from the logits
    on a local model, the share of k sampled "yes" verdicts elsewhere; 0 for an abstention."""
    confidence, stage, _ = verify_detail(small, messages, answer, samples)
    return confidence, stage


def verify_detail(small: llm.LLMOptions, messages: list[dict], answer: str,
                  samples: int) -> tuple[float, Stage, cascade_verify.Verification]:
    """verify_confidence, plus the per-ordering figures an evaluation records."""
    found = cascade_verify.verify(small, messages, answer, samples, abstained=abstains(answer))
    stage = Stage("verify", small.model, found.latency_ms, found.prompt_tokens, found.completion_tokens,
                  found.cached_tokens, found.method)
    return found.confidence, stage, found


def faithfulness_confidence(answer: str, sources: Sequence[Source],
                            encode: Callable[[Sequence[str]], np.ndarray]) -> tuple[float, Stage]:
    """Share of answer sentences that some retrieved source supports (cosine with one of its sentences,
    or its whole text, at least answer_eval's SUPPORT_THRESHOLD), in a single embedder call."""
    started = time.perf_counter()
    value = 0.0
    sentences = [" ".join(strip_markers(s).split()) for s in split_sentences(answer)]
    sentences = [s for s in sentences if s.strip(".!?,;: ")]
    if sentences and sources and not abstains(answer):
        candidates = [c for source in sources for c in (*split_sentences(source.text), source.text)]
        vectors = encode([*sentences, *candidates])
        best = (vectors[:len(sentences)] @ vectors[len(sentences):].T).max(axis=1)
        value = float((best >= SUPPORT_THRESHOLD).mean())
    return value, Stage("faithfulness", "embedder", _ms(started))


def router_confidence(collection: Any, query: str) -> tuple[float, Stage]:
    """P(small right) from the collection's stored router; RouterError if it has none or it does not fit."""
    from indexes.embedders import encode_queries

    started = time.perf_counter()
    router = cascade_router.load(collection.folder)
    if router.embedder != collection.config.embedder.model:
        raise cascade_router.RouterError(f"the cascade router was trained on {router.embedder!r} vectors but the "
                                         f"collection embeds with {collection.config.embedder.model!r}; train it again")
    value = router.confidence(encode_queries(collection.embedder, [query])[0])
    return value, Stage("router", "router", _ms(started))


def _encoder(collection: Any) -> Callable[[Sequence[str]], np.ndarray]:
    return lambda texts: collection.embedder.encode(list(texts))


def judge(spec: CascadeSpec, prepared: Prepared, collection: Any, answer: str) -> tuple[float, Stage]:
    """The confidence of a small answer under the spec's policy (verify or faithfulness)."""
    if spec.policy == "verify":
        return verify_confidence(stage_options(prepared.options, spec, False), prepared.messages, answer, spec.samples)
    return faithfulness_confidence(answer, prepared.sources, _encoder(collection))


def run(spec: CascadeSpec, prepared: Prepared, collection: Any) -> llm.Completion:
    """The accepted completion; `prepared.cascade` receives the report."""
    text = "".join(stream(spec, prepared, collection, None))
    report: CascadeReport = prepared.cascade
    return llm.Completion(text, report.answered_by, sum(s.prompt_tokens for s in report.stages),
                          sum(s.completion_tokens for s in report.stages))


def stream(spec: CascadeSpec, prepared: Prepared, collection: Any, usage: dict[str, int] | None) -> Iterator[str]:
    """Deltas of the accepted answer only; `prepared.cascade` holds the report when it ends."""
    report = CascadeReport(spec.policy, spec.threshold, spec.small, spec.large)
    prepared.cascade = report
    small, large = stage_options(prepared.options, spec, False), stage_options(prepared.options, spec, True)
    if spec.policy == "router":
        report.confidence, stage = router_confidence(collection, prepared.retrieval.query)
        report.stages.append(stage)
        report.escalated = report.confidence < spec.threshold
        chosen = large if report.escalated else small
        report.answered_by = chosen.model
        yield from stream_stage(chosen, prepared.messages, "large" if report.escalated else "small",
                                report.stages, usage)
        return
    completion, stage = answer_once(small, prepared.messages, "small")
    report.stages.append(stage)
    report.confidence, stage = judge(spec, prepared, collection, completion.text)
    report.stages.append(stage)
    report.escalated = report.confidence < spec.threshold
    if not report.escalated:
        report.answered_by = small.model
        if usage is not None:
            usage.update(prompt_tokens=completion.prompt_tokens, completion_tokens=completion.completion_tokens)
        if completion.text:
            yield completion.text
        return
    report.answered_by = large.model
    yield from stream_stage(large, prepared.messages, "large", report.stages, usage)


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
