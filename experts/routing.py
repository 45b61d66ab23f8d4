"""Which cards to consult for a query: the ones named on the request, or the ones that fit it.

Automatic routing compares the query with each active knowledge card's description and, when the
card has a source collection, with that collection's centroid. A description says what a team
believes the card knows; the centroid says what it was actually trained on; the better of the two
decides. Every card considered gets a line in the report saying why it was or was not consulted.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal, Protocol

import numpy as np

from experts.manifest import CardManifest
from experts.selectors import Encode

CardsChoice = Literal["auto", "none"] | list[str]


class CardLike(Protocol):
    manifest: CardManifest


@dataclass
class RouteDecision:
    card: str
    version: str
    selected: bool
    reason: str
    score: float | None = None
    description_similarity: float | None = None
    centroid_similarity: float | None = None


class CardRouter:
    def __init__(self, encode: Encode, centroid: Callable[[CardLike], np.ndarray | None],
                 threshold: float = 0.35, max_cards: int = 2) -> None:
        self.encode = encode
        self.centroid = centroid
        self.threshold = threshold  # for cards without a fitted threshold of their own
        self.max_cards = max_cards
        self._descriptions: dict[str, np.ndarray] = {}

    def threshold_for(self, manifest: CardManifest) -> float:
        """The card's own threshold (fitted by `mighty cards route-fit`), else the server's."""
        fitted = manifest.routing.threshold
        return self.threshold if fitted is None else fitted

    def route(self, query: str, cards: Sequence[CardLike]) -> list[RouteDecision]:
        """Score every knowledge card; the best `max_cards` at or above their thresholds are selected."""
        decisions = self.score(query, cards)
        thresholds = {c.manifest.name: self.threshold_for(c.manifest) for c in cards}
        return select(decisions, thresholds, self.max_cards,
                      fitted={c.manifest.name for c in cards if c.manifest.routing.threshold is not None})

    def score(self, query: str, cards: Sequence[CardLike]) -> list[RouteDecision]:
        """Unselected decisions carrying each knowledge card's similarity to the query."""
        candidates = [c for c in cards if "knowledge" in c.manifest.kind]
        if not candidates:
            return []
        query_vector = self.encode([query])[0]
        decisions = []
        for card in candidates:
            manifest = card.manifest
            description = float(self._description(manifest) @ query_vector)
            centroid_vector = self.centroid(card)
            centroid = float(centroid_vector @ query_vector) if centroid_vector is not None else None
            score = max(description, centroid if centroid is not None else -1.0)
            decisions.append(RouteDecision(manifest.name, manifest.version, False, "", round(score, 4),
                                           round(description, 4), None if centroid is None else round(centroid, 4)))
        return decisions

    def _description(self, manifest: CardManifest) -> np.ndarray:
        key = f"{manifest.name}@{manifest.version}"
        if key not in self._descriptions:
            text = f"{manifest.domain}: {manifest.description}"
            self._descriptions[key] = self.encode([text])[0]
        return self._descriptions[key]


def select(decisions: Sequence[RouteDecision], thresholds: dict[str, float], max_cards: int,
           fitted: set[str] | frozenset[str] = frozenset()) -> list[RouteDecision]:
    """Mark the best `max_cards` decisions at or above their card's threshold as selected, best first.

    Pure, so a threshold fit can replay routing under candidate thresholds without re-encoding."""
    ranked = [replace(d, selected=False, reason="") for d in sorted(decisions, key=lambda d: -(d.score or 0.0))]
    chosen = 0
    for decision in ranked:
        threshold = thresholds[decision.card]
        kind = "fitted threshold" if decision.card in fitted else "routing threshold"
        if (decision.score or 0.0) < threshold:
            decision.reason = f"similarity {decision.score:.2f} below the {kind} {threshold:.2f}"
        elif chosen >= max_cards:
            decision.reason = f"similar ({decision.score:.2f}) but {max_cards} better cards were chosen"
        else:
            chosen += 1
            decision.selected = True
            which = "description" if decision.score == decision.description_similarity else "corpus centroid"
            decision.reason = f"{which} similarity {decision.score:.2f} >= {kind} {threshold:.2f}"
    return ranked


def named(cards: Sequence[CardLike]) -> list[RouteDecision]:
    """Decisions for cards a request named explicitly (every one of them is consulted)."""
    return [RouteDecision(c.manifest.name, c.manifest.version, True, "named on the request") for c in cards]
