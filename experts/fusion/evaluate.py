"""Evaluate fusion on a corpus: perplexity of base, experts and every rule, and decoding speed.

Flow: split the corpus (held-out documents only, on a card's own corpus) -> one scoring pass over the
fitting part and one over the scoring part -> fit every rule on the first -> perplexities on the
second -> greedy decoding speed of the base alone and of the fused model.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from pydantic import BaseModel, Field

from experts.fusion.cards import CardRef
from experts.fusion.combine import FusionParams
from experts.fusion.corpus import EvalSplit, split_corpus
from experts.fusion.decoder import FusedDecoder
from experts.fusion.fit import FitReport, fit_all, table_nll
from experts.fusion.fused import FusedModel
from experts.fusion.scoring import TokenTable, score
from experts.manifest import FusionSettings
from experts.models import runtime_model
from rag.runtime.sampling import SamplingOptions

SPEED_PROMPT_TOKENS = 64


class EvalOptions(BaseModel):
    fit_fraction: float = Field(0.5, gt=0, lt=1)
    seed: int = 0
    window: int = Field(256, ge=8, le=4096, description="tokens scored per window")
    max_tokens: int | None = Field(None, ge=10, description="cap on tokens scored per split")
    batch: int = Field(2, ge=1, le=64)
    speed_tokens: int = Field(32, ge=0, le=1024, description="tokens decoded to time; 0 skips timing")
    speed_method: str | None = Field(None, description="rule timed for tokens_per_s_fused (default: learned)")


class EvalReport(BaseModel):
    base: str
    cards: list[str]
    split: str
    ppl_base: float
    ppl_expert: dict[str, float]
    ppl_anti: dict[str, float] = Field(default_factory=dict, description="each card's untuned base, where it is "
                                                                         "not the fused base (proxy's anti-expert)")
    ppl_fused: dict[str, float]
    ppl_equal_weights: float = Field(description="mixture with equal weights, the unfitted reference")
    weights: dict[str, dict] = Field(description="fitted parameters per rule (weights: base first)")
    fit_nll: dict[str, float]
    validation_nll: dict[str, float]
    tokens: int = Field(description="tokens scored for the perplexities")
    fit_tokens: int
    tokens_per_s_base: float | None = None
    tokens_per_s_fused: float | None = None
    speed_method: str | None = None
    overhead_ms_per_step: float | None = None
    forward_ms_per_step: float | None = None
    seconds: dict[str, float] = Field(default_factory=dict)


def settings_from(params: FusionParams, base: str, experts: list[CardRef], fitted_on: str,
                  validation_nll: float | None) -> FusionSettings:
    """What a card's manifest stores for one fitted rule."""
    return FusionSettings(
        method=params.method, base=base,
        weights=list(params.weights) if params.weights is not None and params.method != "proxy" else None,
        alpha=params.alpha if params.method == "proxy" else None,
        temperature=params.temperature if params.method == "entropy" else None,
        beta=params.beta if params.method == "contrastive" else None,
        plausibility=params.plausibility if params.method == "contrastive" else None,
        gate=params.gate.to_lists() if params.gate is not None else None,
        experts=[card.manifest.name for card in experts] if len(experts) > 1 else None,
        fitted_on=fitted_on, validation_nll=validation_nll)


def describe(params: FusionParams) -> dict:
    data = settings_from(params, "", [], "", None).model_dump(exclude_none=True,
                                                               exclude={"base", "fitted_on", "method"})
    if "gate" in data:
        data["gate"] = {"hidden": len(data["gate"]["b1"]), "features": len(data["gate"]["mean"])}
    return data


Progress = Callable[[str, int | None], Callable[[int], None]]  # (stage, total) -> advance(n)


def _no_progress(stage: str, total: int | None) -> Callable[[int], None]:
    return lambda n: None


def score_split(model: FusedModel, split: EvalSplit, options: EvalOptions,
                progress: Progress = _no_progress) -> tuple[TokenTable, TokenTable]:
    tables = []
    for stage, texts in (("scoring the fitting split", split.fit), ("scoring the evaluation split", split.score)):
        total = _token_total(model, texts, options)
        tables.append(score(model, texts, options.window, options.batch, options.max_tokens,
                            advance=progress(stage, total)))
    return tables[0], tables[1]


def _token_total(model: FusedModel, texts: list[str], options: EvalOptions) -> int:
    total = sum(max(0, len(model.tokenizer(t)["input_ids"]) - 1) for t in texts)
    return min(total, options.max_tokens) if options.max_tokens else total


def evaluate(base: str, cards: list[CardRef], corpus: Path, options: EvalOptions,
             progress: Progress = _no_progress) -> tuple[EvalReport, FitReport]:
    started = time.perf_counter()
    split = split_corpus(corpus, cards, options.fit_fraction, options.seed)
    model = FusedModel(base, cards)
    loaded = time.perf_counter()
    fit_table, score_table = score_split(model, split, options, progress)
    scored = time.perf_counter()
    fitted = fit_all(fit_table)
    validation = {method: table_nll(score_table, params) for method, params in fitted.params.items()}
    equal = table_nll(score_table, FusionParams("mixture", None))
    report = EvalReport(
        base=base, cards=[card.label for card in cards], split=split.note,
        ppl_base=math.exp(-float(score_table.target[0].mean())),
        ppl_expert={card.label: math.exp(-float(score_table.target[i + 1].mean())) for i, card in enumerate(cards)},
        ppl_anti=_anti_perplexities(model, score_table),
        ppl_fused={method: math.exp(nll) for method, nll in validation.items()},
        ppl_equal_weights=math.exp(equal),
        weights={method: describe(params) for method, params in fitted.params.items()},
        fit_nll=fitted.fit_nll, validation_nll=validation, tokens=score_table.tokens, fit_tokens=fit_table.tokens,
    )
    if options.speed_tokens:
        method = options.speed_method or "learned"
        prompt = model.tokenizer(split.score[0])["input_ids"][:SPEED_PROMPT_TOKENS]
        report.tokens_per_s_base = base_tokens_per_s(base, prompt, options.speed_tokens)
        decoder = FusedDecoder(model, fitted.params[method])
        stats = decode_stats(decoder, prompt, options.speed_tokens)
        report.speed_method, report.tokens_per_s_fused = method, stats.tokens_per_s
        report.overhead_ms_per_step = stats.overhead_ms_per_step
        report.forward_ms_per_step = 1000 * stats.forward_s / max(1, stats.steps - 1)
    report.seconds = {"load": loaded - started, "score": scored - loaded, "fit+speed": time.perf_counter() - scored}
    return report, fitted


def _anti_perplexities(model: FusedModel, table: TokenTable) -> dict[str, float]:
    """Perplexity of each distinct anti-expert that is not the fused base (e.g. the untuned 0.5B under a
    1.5B base), from the same scoring pass."""
    if table.anti_target is None:
        return {}
    out = {}
    for index, role in enumerate(model.anti_roles()):
        if role.model is not model.runtime and role.label not in out:
            out[role.label] = math.exp(-float(table.anti_target[index].mean()))
    return out


def decode_stats(decoder: FusedDecoder, prompt: list[int], tokens: int):
    """Greedy decoding stats after a short warm-up (first calls pay for allocations)."""
    decoder.generate([prompt], SamplingOptions(max_tokens=4))
    decoder.generate([prompt], SamplingOptions(max_tokens=tokens))
    return decoder.last_stats


def base_tokens_per_s(base: str, prompt: list[int], tokens: int) -> float:
    """The plain base model's greedy decoding speed on the runtime (prefill excluded): the yardstick
    for fused decoding, which runs the same models through the same runtime."""
    model = runtime_model(base)
    with model.lock:
        model.reset()
        logits = model.prefill(prompt)
        started = time.perf_counter()
        for _ in range(tokens - 1):
            logits = model.step(int(logits.argmax()))
        elapsed = time.perf_counter() - started
    return (tokens - 1) / max(elapsed, 1e-9)
