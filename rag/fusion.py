"""Fusion of ranked lists from several retrievers into one ranking with scores in [0, 1].

Reciprocal rank fusion ignores scores; the convex combination uses them. Each retriever's scores
are min-max normalised over the pooled candidates (every candidate is scored by every retriever,
so nothing is guessed for a document one retriever missed), and, when adaptive, each retriever's
weight is scaled by how clearly its best candidates stand out from the rest for this query: a
retriever that is unsure (a flat score curve) cannot drag a confident one down.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

Scores = Mapping[str, np.ndarray]  # retriever -> score per pooled candidate (same order)

_CONFIDENCE_TOP = 10


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


def convex_combination(scores: Scores, weights: Mapping[str, float],
                       adaptive: bool = True) -> tuple[np.ndarray, dict[str, float]]:
    """Fused score per candidate, and the weights actually used for this query."""
    normalised = {name: min_max(values) for name, values in scores.items()}
    used = adaptive_weights(normalised, weights) if adaptive else dict(weights)
    fused = sum(used[name] * values for name, values in normalised.items())
    return np.asarray(fused, dtype=np.float64), used
