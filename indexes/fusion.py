"""Fusion of ranked lists from several retrievers into one ranking with scores in [0, 1].

Reciprocal rank fusion ignores scores; the convex combination uses them. Each retriever's scores
are normalised over the pooled candidates (every candidate is scored by every retriever, so
nothing is guessed for a document one retriever missed): min-max maps them onto [0, 1], z-score
centres them on the pool's mean in units of its spread (robust to one outlier stretching the
range). When adaptive, each retriever's weight is also scaled by how clearly its best candidates
stand out from the rest for this query: a retriever that is unsure (a flat score curve) cannot drag
a confident one down. Which weights, normalisation and adaptivity a collection uses is measured,
not assumed: see `indexes.calibration`.

This is pure arithmetic on score arrays, so it lives in `indexes` where both the commit-time
calibration and the query-time retriever (in `rag`) can use the very same function.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

Scores = Mapping[str, np.ndarray]  # retriever -> score per pooled candidate (same order)
Normalisation = Literal["minmax", "zscore"]

_CONFIDENCE_TOP = 10


@dataclass(frozen=True)
class FusionParams:
    """How one query's pooled scores are combined: dense weight (BM25 gets the rest), the
    per-retriever normalisation, and whether weights follow each retriever's per-query confidence."""

    dense_weight: float = 0.6
    normalisation: Normalisation = "minmax"
    adaptive: bool = True

    def weights(self) -> dict[str, float]:
        return {"bm25": 1.0 - self.dense_weight, "dense": self.dense_weight}


def reciprocal_rank_fusion(ranks: Mapping[str, np.ndarray], k: int = 60,
                           weights: Mapping[str, float] | None = None) -> np.ndarray:
    """ranks: retriever -> 1-based rank per candidate, 0 when that retriever did not return it."""
    total = None
    for name, rank in ranks.items():
        weight = 1.0 if weights is None else weights.get(name, 1.0)
        part = np.where(rank > 0, weight / (k + np.maximum(rank, 1)), 0.0)
        total = part if total is None else total + part
    if total is None or not len(total):
        return np.zeros(0)
    return total / total.max() if total.max() > 0 else total


def min_max(scores: np.ndarray) -> np.ndarray:
    low, high = float(scores.min()), float(scores.max())
    if high - low < 1e-12:
        return np.ones_like(scores, dtype=np.float64) if high > 0 else np.zeros_like(scores, dtype=np.float64)
    return (scores - low) / (high - low)


def z_score(scores: np.ndarray) -> np.ndarray:
    spread = float(scores.std())
    if spread < 1e-12:
        return np.zeros_like(scores, dtype=np.float64)
    return (scores - float(scores.mean())) / spread


def confidence(normalised: np.ndarray) -> float:
    """How far the top result stands above the next ones, in [0, 1] (0: a flat curve)."""
    if len(normalised) < 2:
        return 1.0
    top = np.sort(normalised)[::-1][:_CONFIDENCE_TOP]
    return float(np.clip(top[0] - top[1:].mean(), 0.0, 1.0))


def adaptive_weights(normalised: Scores, weights: Mapping[str, float]) -> dict[str, float]:
    """Base weights scaled by each retriever's confidence, renormalised to sum to one."""
    scaled = {name: weights[name] * (0.5 + confidence(values)) for name, values in normalised.items()}
    total = sum(scaled.values())
    return {name: value / total for name, value in scaled.items()} if total > 0 else dict(weights)


def convex_combination(scores: Scores, weights: Mapping[str, float], adaptive: bool = True,
                       normalisation: Normalisation = "minmax") -> tuple[np.ndarray, dict[str, float]]:
    """Fused score per candidate in [0, 1], and the weights actually used for this query."""
    ranged = {name: min_max(values) for name, values in scores.items()}
    used = adaptive_weights(ranged, weights) if adaptive else dict(weights)
    parts = ranged if normalisation == "minmax" else {name: z_score(v) for name, v in scores.items()}
    fused = np.asarray(sum(used.get(name, 0.0) * values for name, values in parts.items()), dtype=np.float64)
    if normalisation != "minmax" and len(fused):
        fused = min_max(fused)
    return fused, used


def match_weight(top: float, keyword_top: float | None, sentence_top: float, keyword_weight: float,
                 sentence_weight: float) -> float:
    """The dense weight of one query, from how well the embedder matches it: `top` is its best dense
    score; `sentence_top` and `keyword_top` are the mean best dense scores of the collection's own
    sentence and keyword-bag pseudo-queries (`indexes.calibration`), each style with the weight
    calibrated on it. A query matched as well as a typical sentence gets the sentence weight, one
    matched no better than a typical keyword bag the keyword weight, linearly in between. Scores are
    compared only with the same collection and embedder, so no absolute cosine level is assumed."""
    if keyword_top is None or sentence_top <= keyword_top:
        return sentence_weight
    share = min(max((top - keyword_top) / (sentence_top - keyword_top), 0.0), 1.0)
    return keyword_weight + share * (sentence_weight - keyword_weight)


def tie_weight(top: float, sentence_top: float, spread: float, weight: float, weight_max: float) -> float:
    """The dense weight of a query matched better than a typical sentence pseudo-query: from the
    calibrated `weight` (at the sentences' mean best dense score `sentence_top`) up to `weight_max`,
    the highest weight the sentence evidence could not tell from it, reached one standard deviation
    (`spread`) above that mean. Below the mean, or without such a range, the weight is unchanged."""
    if weight_max <= weight or spread <= 0 or top <= sentence_top:
        return weight
    return weight + min((top - sentence_top) / spread, 1.0) * (weight_max - weight)


def fuse(scores: Scores, params: FusionParams) -> tuple[np.ndarray, dict[str, float]]:
    return convex_combination(scores, params.weights(), params.adaptive, params.normalisation)
