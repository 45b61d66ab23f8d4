"""Ranking metrics over graded judgements (trec_eval conventions: linear gain, log2 discount)."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

Qrels = Mapping[str, int]  # document id -> grade (> 0 relevant)


def _dcg(grades: Sequence[int]) -> float:
    return sum(g / math.log2(i + 2) for i, g in enumerate(grades))


def ndcg_at_k(ranking: Sequence[str], qrels: Qrels, k: int = 10) -> float:
    """Standard nDCG: the ideal ranking is built from every judged document."""
    ideal = _dcg(sorted((g for g in qrels.values() if g > 0), reverse=True)[:k])
    return _dcg([qrels.get(d, 0) for d in ranking[:k]]) / ideal if ideal > 0 else 0.0


def ndcg_at_k_leaderboard(ranking: Sequence[str], qrels: Qrels, k: int = 10) -> float:
    """The public embedding leaderboard's variant: the ideal ranking is the retrieved list itself,
    re-sorted by grade, so it measures ordering within what was retrieved, not coverage."""
    grades = [qrels.get(d, 0) for d in ranking[:k]]
    ideal = _dcg(sorted(grades, reverse=True))
    return _dcg(grades) / ideal if ideal > 0 else 0.0


def recall_at_k(ranking: Sequence[str], qrels: Qrels, k: int) -> float:
    relevant = {d for d, g in qrels.items() if g > 0}
    return len(relevant.intersection(ranking[:k])) / len(relevant) if relevant else 0.0


def mrr_at_k(ranking: Sequence[str], qrels: Qrels, k: int = 10) -> float:
    for rank, doc in enumerate(ranking[:k], start=1):
        if qrels.get(doc, 0) > 0:
            return 1.0 / rank
    return 0.0


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)
