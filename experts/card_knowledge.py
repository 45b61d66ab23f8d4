"""The knowledge-card stage of the black-box path: route, write, select, and hand back cited sources.

route (which cards) -> write (k passages each) -> relevance (best passages) -> pruning (best
sentences within a budget) -> factuality (sentences backed by evidence). What survives becomes one
source per card, cited as `card:name@version` next to the retrieved chunks.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from experts.errors import CardNotFound
from experts.knowledge import CardLike, KnowledgeWriter
from experts.routing import CardRouter, CardsChoice, RouteDecision, named
from experts.selectors import (CountTokens, Encode, SelectorSettings, check_facts, drop_restated, prune,
                               select_relevant)
from rag.context import Source


class CardSource(Protocol):
    """What the stage needs from the registry."""

    def active_cards(self) -> list[Any]: ...

    def get(self, name: str, version: str | None = None) -> Any: ...


class CardChoiceError(ValueError):
    """A request named a card that cannot write knowledge."""


class UnknownCard(CardChoiceError, LookupError):
    """A request named a card that is not registered or has no active version."""


EvidenceSearch = Callable[[CardLike, Sequence[str]], tuple[list[str], str | None]]


@dataclass
class CardKnowledgeItem:
    ref: str
    card: str
    version: str
    domain: str
    text: str
    score: float


@dataclass
class CardReport:
    card: str
    version: str
    generated: int = 0
    cached: bool = False
    write_ms: float = 0.0
    relevance: dict = field(default_factory=dict)
    pruning: dict = field(default_factory=dict)
    factuality: dict = field(default_factory=dict)
    novelty: dict = field(default_factory=dict)
    evidence: str = ""
    used: bool = False


@dataclass
class KnowledgeResult:
    items: list[CardKnowledgeItem]
    considered: list[RouteDecision]
    cards: list[CardReport]

    def report(self) -> dict:
        return {"considered": [asdict(d) for d in self.considered], "cards": [asdict(c) for c in self.cards]}

    def sources(self) -> list[Source]:
        """Card knowledge as context sources, cited like retrieved chunks (numbered by the pipeline)."""
        return [Source(0, item.ref, f"{item.domain} knowledge from {item.ref}", item.text, (0, len(item.text)),
                       item.score, kind="card", metadata={"card": item.card, "version": item.version})
                for item in self.items]


class CardKnowledge:
    def __init__(self, cards: CardSource, encode: Encode, count_tokens: CountTokens, router: CardRouter,
                 writer: KnowledgeWriter, evidence: EvidenceSearch | None = None,
                 settings: SelectorSettings | None = None) -> None:
        self.cards, self.encode, self.count_tokens = cards, encode, count_tokens
        self.router, self.writer, self.evidence = router, writer, evidence
        self.settings = settings or SelectorSettings()

    def choose(self, query: str, choice: CardsChoice) -> tuple[list[CardLike], list[RouteDecision]]:
        if choice == "none":
            return [], []
        if choice == "auto":
            active = self.cards.active_cards()
            decisions = self.router.route(query, active)
            by_name = {c.manifest.name: c for c in active}
            return [by_name[d.card] for d in decisions if d.selected], decisions
        chosen = []
        for name in dict.fromkeys(choice):
            try:
                card = self.cards.get(name)
            except (LookupError, CardNotFound):
                raise UnknownCard(f"card {name!r} is not registered (or has no active version); "
                                      "list cards with GET /v1/cards") from None
            if "knowledge" not in card.manifest.kind:
                raise CardChoiceError(f"card {name!r} is a {'/'.join(card.manifest.kind)} card and cannot write "
                                      "knowledge; register a version with kind = knowledge")
            chosen.append(card)
        return chosen, named(chosen)

    def run(self, query: str, choice: CardsChoice, request_evidence: Sequence[str] = (),
            settings: SelectorSettings | None = None) -> KnowledgeResult:
        settings = settings or self.settings
        chosen, decisions = self.choose(query, choice)
        items, reports = [], []
        for card in chosen:
            item, report = self._one(card, query, request_evidence, settings)
            reports.append(report)
            if item is not None:
                items.append(item)
        return KnowledgeResult(items, decisions, reports)

    def _one(self, card: CardLike, query: str, request_evidence: Sequence[str],
             settings: SelectorSettings) -> tuple[CardKnowledgeItem | None, CardReport]:
        manifest = card.manifest
        report = CardReport(manifest.name, manifest.version)
        written = self.writer.write(card, query)
        report.generated, report.cached, report.write_ms = len(written.passages), written.cached, written.ms
        relevant, relevance = select_relevant(query, written.passages, self.encode, settings)
        report.relevance = asdict(relevance)
        sentences, pruning = prune(query, [text for text, _ in relevant], self.encode, self.count_tokens, settings)
        report.pruning = asdict(pruning)
        evidence = list(request_evidence)
        report.evidence = f"{len(evidence)} retrieved source(s) of the request"
        if self.evidence is not None and sentences and settings.factuality:
            found, note = self.evidence(card, [query, *sentences])
            evidence.extend(found)
            report.evidence += f"; {note or f'{len(found)} passage(s) from collection {manifest.collection}'}"
        supported, factuality = check_facts(sentences, evidence, self.encode, settings)
        report.factuality = asdict(factuality)
        supported, novelty = drop_restated(supported, request_evidence, self.encode, settings)
        report.novelty = asdict(novelty)
        if not supported:
            return None, report
        report.used = True
        score = max((s for _, s in relevant), default=0.0)
        return CardKnowledgeItem(manifest.ref, manifest.name, manifest.version, manifest.domain,
                                 " ".join(supported), round(score, 4)), report
