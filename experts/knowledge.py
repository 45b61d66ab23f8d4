"""Cards writing background knowledge: k short passages per (query, card version), batched and cached.

The k passages come from one batched `generate` call (k sampled sequences share the prompt's
forward pass). Sampling is seeded from the query and the card version, so the same question gets
the same knowledge and the cache is a pure speed-up, never a change in behaviour. Loaded card
models are kept in a small LRU because each one is a full copy of its base with the LoRA merged in.
"""
from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from experts.manifest import CardManifest
from experts.models import LoadedModel, load_adapter, load_full


class CardLike(Protocol):
    manifest: CardManifest
    path: Path


@dataclass(frozen=True)
class Written:
    passages: list[str]
    cached: bool
    ms: float


def load_card_model(card: CardLike) -> LoadedModel:
    """The card's weights: its LoRA merged into its base, or its full model."""
    spec = card.manifest.model
    if spec.adapter:
        return load_adapter(spec.base, card.path / spec.adapter)
    return load_full(card.path / (spec.full or ""))


class KnowledgeWriter:
    def __init__(self, max_models: int = 2, cache_size: int = 1024) -> None:
        self.max_models = max_models
        self.cache_size = cache_size
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._cache: OrderedDict[str, list[str]] = OrderedDict()
        self._lock = threading.Lock()  # one generation at a time: torch modules are not thread-safe

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

    def _model(self, card: CardLike) -> LoadedModel:
        ref = card.manifest.ref
        if ref in self._models:
            self._models.move_to_end(ref)
            return self._models[ref]
        loaded = load_card_model(card)
        self._models[ref] = loaded
        while len(self._models) > self.max_models:
            self._models.popitem(last=False)
        return loaded

    def _generate(self, card: CardLike, query: str, seed: int) -> list[str]:
        settings = card.manifest.generation
        loaded = self._model(card)
        tokenizer, model = loaded.tokenizer, loaded.model
        inputs = _prompt(tokenizer, settings.prompt.replace("{query}", query))
        k = settings.passages
        sampling: dict[str, Any] = (
            {"do_sample": True, "temperature": settings.temperature, "top_p": settings.top_p}
            if settings.temperature > 0 else {"do_sample": False, "num_beams": max(k, 1)})
        torch.manual_seed(seed)
        with torch.inference_mode():
            output = model.generate(**inputs, max_new_tokens=settings.max_new_tokens, num_return_sequences=k,
                                    no_repeat_ngram_size=4, pad_token_id=tokenizer.pad_token_id, **sampling)
        prompt_length = inputs["input_ids"].shape[1]
        texts = [tokenizer.decode(row[prompt_length:], skip_special_tokens=True).strip() for row in output]
        return [_whole_sentences(text) for text in dict.fromkeys(texts) if text]


def _prompt(tokenizer: Any, instruction: str) -> dict[str, torch.Tensor]:
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template([{"role": "user", "content": instruction}], add_generation_prompt=True,
                                             return_tensors="pt", return_dict=True)
    return tokenizer(instruction + "\n", return_tensors="pt")


def _whole_sentences(text: str) -> str:
    """Drop a sentence cut off by max_new_tokens: a half claim cannot be fact-checked."""
    end = max(text.rfind(". "), text.rfind("! "), text.rfind("? "))
    if text.endswith((".", "!", "?")) or end < 0:
        return text
    return text[:end + 1]


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
