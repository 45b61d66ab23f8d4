"""Cards writing background knowledge: k short passages per (query, card version), cached.

The passages come from the card's model on the local runtime (llama.cpp): its LoRA applied at run
time to the GGUF base, or a full-model card's folder. The k samples share the prompt's KV cache (a
sample after the first evaluates one token of prompt, not all of it). Sampling is seeded from the
query and the card version, so the same question gets the same knowledge and the cache is a pure
speed-up, never a change in behaviour.
"""
from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from experts.manifest import CardManifest
from experts.models import runtime_model
from rag.runtime import LOOP_NGRAM, LocalModel, SamplingOptions


class CardLike(Protocol):
    manifest: CardManifest
    path: Path


@dataclass(frozen=True)
class Written:
    passages: list[str]
    cached: bool
    ms: float


def card_model(card: CardLike) -> LocalModel:
    """The card's model on the runtime: its base with the LoRA applied, or its full model folder.

    Card folders come from the registry's store (or the operator's CLI), never from a client, so a
    full model's folder may be opened as a path."""
    spec = card.manifest.model
    if spec.adapter:
        return runtime_model(spec.base, adapter=card.path / spec.adapter)
    return runtime_model(spec.base, full=card.path / (spec.full or ""))


class KnowledgeWriter:
    def __init__(self, cache_size: int = 1024) -> None:
        self.cache_size = cache_size
        self._cache: OrderedDict[str, list[str]] = OrderedDict()
        self._lock = threading.Lock()  # one card writes at a time: generations would only fight for cores

    def clear(self) -> None:
        """Forget every cached passage (an evaluation that times knowledge writing starts cold)."""
        with self._lock:
            self._cache.clear()

    def write(self, card: CardLike, query: str) -> Written:
        started = time.perf_counter()
        settings = card.manifest.generation
        key = hashlib.sha256(f"{card.manifest.ref}\0{settings.model_dump_json()}\0{query}".encode()).hexdigest()
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return Written(list(self._cache[key]), True, _ms(started))
            passages = self._generate(card, query, seed=int(key[:8], 16))
            self._cache[key] = passages
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return Written(list(passages), False, _ms(started))

    def _generate(self, card: CardLike, query: str, seed: int) -> list[str]:
        settings = card.manifest.generation
        model = card_model(card)
        prompt = model.chat_tokens([{"role": "user", "content": settings.prompt.replace("{query}", query)}])
        samples = settings.passages if settings.temperature > 0 else 1  # greedy writes one passage
        texts = []
        for index in range(samples):
            options = SamplingOptions(max_tokens=settings.max_new_tokens, temperature=settings.temperature,
                                      top_p=settings.top_p, seed=seed + index, no_repeat_ngram=LOOP_NGRAM)
            texts.append(model.generate(prompt, options).text.strip())
        return [_whole_sentences(text) for text in dict.fromkeys(texts) if text]


def _whole_sentences(text: str) -> str:
    """Drop a sentence cut off by max_new_tokens: a half claim cannot be fact-checked."""
    end = max(text.rfind(". "), text.rfind("! "), text.rfind("? "))
    if text.endswith((".", "!", "?")) or end < 0:
        return text
    return text[:end + 1]


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
