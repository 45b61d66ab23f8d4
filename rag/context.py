"""Context assembly: turn ranked hits into numbered, de-duplicated sources within a token budget.

Overlapping chunks of one document (neighbours share `overlap` tokens) are merged into one source
so the model does not read the same sentence twice and a citation points at one contiguous span.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from rag.schemas import Hit


@dataclass(frozen=True)
class Source:
    number: int
    id: str
    title: str
    text: str
    span: tuple[int, int]
    score: float
    kind: str = "chunk"  # "chunk" from a collection, "card" for expert-card knowledge (id = card:name@version)
    metadata: dict[str, Any] = field(default_factory=dict)


def merge_overlapping(hits: Sequence[Hit]) -> list[Source]:
    """One source per contiguous span; a merged source keeps the best score of its parts."""
    merged: list[Source] = []
    for hit in hits:
        for i, source in enumerate(merged):
            if source.id == hit.id and hit.span[0] <= source.span[1] and source.span[0] <= hit.span[1]:
                merged[i] = _union(source, hit)
                break
        else:
            merged.append(Source(0, hit.id, hit.title, hit.text, hit.span, hit.score, metadata=hit.metadata))
    return merged


def _union(source: Source, hit: Hit) -> Source:
    (a_start, a_end), (b_start, b_end) = source.span, hit.span
    if b_start >= a_start and b_end <= a_end:
        return replace(source, score=max(source.score, hit.score))
    if a_start >= b_start and a_end <= b_end:
        return replace(source, text=hit.text, span=hit.span, score=max(source.score, hit.score))
    first_text, first_span, second_text, second_span = (
        (source.text, source.span, hit.text, hit.span) if a_start <= b_start else (hit.text, hit.span, source.text, source.span))
    text = first_text + second_text[first_span[1] - second_span[0]:]
    return replace(source, text=text, span=(first_span[0], second_span[1]), score=max(source.score, hit.score))


def assemble(hits: Sequence[Hit], budget_tokens: int, count_tokens: Callable[[str], int],
             min_relative_score: float = 0.0) -> list[Source]:
    """Sources in relevance order, numbered from 1, that together fit in `budget_tokens`.

    A source scoring below `min_relative_score` times the best one is left out even when it would
    fit: a small model reads every source it is given, and a weak one costs prompt time and tempts it
    to answer from the wrong passage.
    """
    chosen: list[Source] = []
    used = 0
    ranked = sorted(merge_overlapping(hits), key=lambda s: -s.score)
    floor = ranked[0].score * min_relative_score if ranked else 0.0
    for source in ranked:
        if source.score < floor:
            break
        cost = count_tokens(source.text) + 16  # delimiters and attributes
        if used + cost > budget_tokens:
            continue  # a shorter, less relevant source may still fit
        used += cost
        chosen.append(replace(source, number=len(chosen) + 1))
    return chosen
