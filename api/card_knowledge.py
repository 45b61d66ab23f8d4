"""Expert-card knowledge inside the service: one stage per process, wired to the registry and collections.

Cards are consulted between retrieval and prompt assembly, so a card's sentences can be checked
against the request's own retrieved sources as well as against the card's source collection.
"""
from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import numpy as np
from fastapi import HTTPException, status
from fastapi.concurrency import run_in_threadpool

from api.metrics import STAGE_SECONDS
from api.state import ServiceState
from experts.card_knowledge import CardChoiceError, CardKnowledge, KnowledgeResult, UnknownCard
from experts.knowledge import KnowledgeWriter
from experts.routing import CardRouter, CardsChoice
from experts.selectors import SelectorSettings
from indexes.config import EmbedderConfig
from indexes.chunking import load_fast_tokenizer
from indexes.embedders import load_embedder, resolve_model
from rag.schemas import RetrievalRequest, RetrievalResult

_BUILD_LOCK = threading.Lock()
EVIDENCE_PER_TEXT = 3


def knowledge_stage(state: ServiceState) -> CardKnowledge:
    """Built on first use: the routing embedder and card models load only once cards are consulted."""
    with _BUILD_LOCK:
        stage = getattr(state, "_card_knowledge", None)
        if stage is None:
            config = EmbedderConfig()
            embedder = load_embedder(config)

            def encode(texts: Sequence[str]) -> np.ndarray:
                return embedder.encode(list(texts))

            tokenizer = load_fast_tokenizer(resolve_model(config.model))

            def count_tokens(text: str) -> int:
                return len(tokenizer.encode(text, add_special_tokens=False).ids)

            stage = CardKnowledge(
                state.cards, encode, count_tokens,
                CardRouter(encode, lambda card: _centroid(state, card, config),
                           threshold=state.settings.card_route_threshold, max_cards=state.settings.max_cards),
                KnowledgeWriter(), evidence=lambda card, texts: _evidence(state, card, texts))
            state._card_knowledge = stage
        return stage


def _centroid(state: ServiceState, card, config: EmbedderConfig) -> np.ndarray | None:
    name = card.manifest.collection
    if not name or name not in state.home.names():
        return None
    collection = state.collection(name)
    if collection.config.embedder != config:  # another embedding space: not comparable with the query
        return None
    return collection.snapshot().centroid()


def _evidence(state: ServiceState, card, texts: Sequence[str]) -> tuple[list[str], str | None]:
    name = card.manifest.collection
    if not name:
        return [], "the card names no source collection"
    if name not in state.home.names():
        return [], f"the card's collection {name!r} does not exist on this server"
    retriever = state.retriever(name)
    found: list[str] = []
    for text in texts:
        result = retriever.search(RetrievalRequest(query=text[:1000], top_k=EVIDENCE_PER_TEXT))
        found.extend(hit.text for hit in result.hits)
    found = list(dict.fromkeys(found))
    return found, f"{len(found)} passage(s) from collection {name!r}"


def resolve_choice(state: ServiceState, choice: CardsChoice | None) -> CardsChoice:
    return state.settings.default_cards if choice is None else choice


async def gather(state: ServiceState, query: str, choice: CardsChoice | None, retrieval: RetrievalResult,
                 settings: SelectorSettings | None) -> KnowledgeResult | None:
    """Run the card stage off the event loop under its timeout; None when the request wants no cards."""
    choice = resolve_choice(state, choice)
    if choice == "none" or (choice == "auto" and not state.cards.active_cards()):
        return None
    stage = await run_in_threadpool(knowledge_stage, state)
    evidence = [hit.text for hit in retrieval.hits]
    timeout = state.settings.cards_timeout_s
    try:
        with STAGE_SECONDS.labels("cards").time():
            return await asyncio.wait_for(run_in_threadpool(stage.run, query, choice, evidence, settings), timeout)
    except TimeoutError:
        raise HTTPException(status.HTTP_504_GATEWAY_TIMEOUT,
                            {"stage": "cards", "message": f"expert cards took longer than {timeout:g}s"}) from None
    except UnknownCard as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    except CardChoiceError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
