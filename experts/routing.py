"""Which cards to consult for a query: the ones named on the request, or the ones that fit it.

Automatic routing compares the query with each active knowledge card's description and, when the
card has a source collection, with that collection's centroid. A description says what a team
believes the card knows; the centroid says what it was actually trained on; the better of the two
decides. Every card considered gets a line in the report saying why it was or was not consulted.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
        self.threshold = threshold
        self.max_cards = max_cards
        self._descriptions: dict[str, np.ndarray] = {}

    def route(self, query: str, cards: Sequence[CardLike]) -> list[RouteDecision]:
        """Score every knowledge card; the best `max_cards` at or above the threshold are selected."""
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
        ranked = sorted(decisions, key=lambda d: -(d.score or 0.0))
        chosen = 0
        for decision in ranked:
            if (decision.score or 0.0) < self.threshold:
                decision.reason = f"similarity {decision.score:.2f} below the routing threshold {self.threshold:.2f}"
            elif chosen >= self.max_cards:
                decision.reason = f"similar ({decision.score:.2f}) but {self.max_cards} better cards were chosen"
            else:
                chosen += 1
                decision.selected = True
                which = "description" if decision.score == decision.description_similarity else "corpus centroid"
                decision.reason = f"{which} similarity {decision.score:.2f} >= threshold {self.threshold:.2f}"
        return ranked

    def _description(self, manifest: CardManifest) -> np.ndarray:
        key = f"{manifest.name}@{manifest.version}"
        if key not in self._descriptions:
            text = f"{manifest.domain}: {manifest.description}"
            self._descriptions[key] = self.encode([text])[0]
        return self._descriptions[key]


def named(cards: Sequence[CardLike]) -> list[RouteDecision]:
    """Decisions for cards a request named explicitly (every one of them is consulted)."""
    return [RouteDecision(c.manifest.name, c.manifest.version, True, "named on the request") for c in cards]
