"""A fused model: a base and expert cards set up to give per-model log-probs over a shared vocabulary.

Setting one up checks vocabularies first (tokenizers only, so another model family is refused
before any weights load), then groups the models into engines: LoRA cards on the fused base become
rows of one batched pass with it, anything else (a card on another base, a full-model card, an
anti-expert that is not the base) runs as its own model. Anti-experts for proxy-tuning are each
card's own base; when that is the fused base (the usual case) it is the base's row, at no cost.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from experts.fusion.cards import CardRef
from experts.fusion.combine import FusionParams, Gate, default_weights
from experts.fusion.engines import Engine, EngineState, LoraRowsEngine, PlainEngine
from experts.fusion.vocab import VocabPlan, plan_vocabulary
from experts.models import HUB_ALIASES, load_adapter, load_base, load_full, load_tokenizer, resolve_base

DEFAULT_METHOD = "mixture"


@dataclass(frozen=True)
class Role:
    engine: int
    row: int
    label: str


_TOKENIZERS: dict[str, Any] = {}
_TOKENIZERS_LOCK = threading.Lock()


def tokenizer_of(model: str, folder: Path | None = None) -> Any:
    """A model's tokenizer without loading (or converting) its weights; cached per process."""
    from transformers import AutoTokenizer

    from rag.local_llm import LOCAL_MODELS, local_tokenizer_source

    key = str(folder) if folder is not None else model
    with _TOKENIZERS_LOCK:
        if key not in _TOKENIZERS:
            name = HUB_ALIASES.get(model, model)
            if folder is not None:
                tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            elif name in LOCAL_MODELS:
                tokenizer = AutoTokenizer.from_pretrained(local_tokenizer_source(name), local_files_only=True)
            else:
                tokenizer = load_tokenizer(model)
            if tokenizer.pad_token_id is None:
                tokenizer.pad_token = tokenizer.eos_token
            _TOKENIZERS[key] = tokenizer
        return _TOKENIZERS[key]


def _same_model(a: str, b: str) -> bool:
    return a == b or HUB_ALIASES.get(a, a) == HUB_ALIASES.get(b, b) or resolve_base(a)[0] == resolve_base(b)[0]


class FusedModel:
    """Base + cards, loaded once and shared; generations on it are serialised by `lock`."""

    def __init__(self, base: str, cards: list[CardRef], shared: bool = True, allow_truncation: bool = True) -> None:
        self.base, self.cards, self.shared = base, list(cards), shared
        self.tokenizer = tokenizer_of(base)
        others = [(f"{card.label} (on {card.base})", tokenizer_of(card.base, card.full)) for card in cards]
        self.vocab: VocabPlan = plan_vocabulary((base, self.tokenizer), others, allow_truncation)
        self.engines: list[Engine] = []
        self.roles: list[Role] = self._load_roles()
        self._anti: list[Role] | None = None
        widths = {engine.label: engine.width() for engine in self.engines}
        narrow = {label: width for label, width in widths.items() if width < self.vocab.size}
        if narrow:
            raise ValueError(f"models {narrow} output fewer logits than the {self.vocab.size}-token vocabulary")
        generation_eos = getattr(self._model(0).generation_config, "eos_token_id", None)
        self.eos_ids = {i for i in _as_list(generation_eos) + _as_list(self.tokenizer.eos_token_id)
                        if i < self.vocab.size}
        self.lock = threading.Lock()
        self.forward_s = 0.0  # time inside the engines' decoding steps, so callers can tell fusion's own cost

    def describe(self) -> str:
        return "+".join([self.base, *[card.label for card in self.cards]])

    @property
    def labels(self) -> list[str]:
        return [role.label for role in self.roles]

    def _model(self, engine: int) -> Any:
        model = self.engines[engine].model
        return model.get_base_model() if hasattr(model, "get_base_model") else model

    def _load_roles(self) -> list[Role]:
        rows = [card for card in self.cards if self.shared and card.adapter is not None
                and _same_model(card.base, self.base)]
        if rows:
            self.engines.append(LoraRowsEngine(self.base, [(card.label, card.adapter) for card in rows]))
        else:
            self.engines.append(PlainEngine(self.base, load_base(self.base).model))
        roles = [Role(0, 0, self.base)]
        for card in self.cards:
            if any(card is row for row in rows):
                roles.append(Role(0, next(i for i, r in enumerate(rows) if r is card) + 1, card.label))
                continue
            loaded = load_full(card.full) if card.full is not None else load_adapter(card.base, card.adapter)
            self.engines.append(PlainEngine(card.label, loaded.model))
            roles.append(Role(len(self.engines) - 1, 0, card.label))
        return roles

    def anti_roles(self) -> list[Role]:
        """Each card's untuned base (proxy-tuning's anti-expert), loaded on first use."""
        if self._anti is None:
            anti, by_base = [], {}
            for card in self.cards:
                if _same_model(card.base, self.base):
                    anti.append(self.roles[0])
                    continue
                if card.base not in by_base:
                    plan = plan_vocabulary((self.base, self.tokenizer), [(card.base, tokenizer_of(card.base))])
                    if plan.size < self.vocab.size:
                        raise ValueError(f"anti-expert {card.base!r} has a smaller vocabulary ({plan.size}) than "
                                         f"the fusion ({self.vocab.size}); proxy fusion cannot use it")
                    self.engines.append(PlainEngine(card.base, load_base(card.base).model))
                    by_base[card.base] = Role(len(self.engines) - 1, 0, card.base)
                anti.append(by_base[card.base])
            self._anti = anti
        return self._anti

    def _logprobs(self, per_engine: list[torch.Tensor | None], roles: list[Role]) -> torch.Tensor:
        picked = [per_engine[role.engine][role.row][..., :self.vocab.size] for role in roles]
        return torch.log_softmax(torch.stack(picked).float(), dim=-1)

    def _engines_for(self, anti: bool) -> list[int]:
        used = {role.engine for role in self.roles}
        if anti:
            used |= {role.engine for role in self.anti_roles()}
        return sorted(used)

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor, anti: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None, dict[int, EngineState]]:
        """Log-probs [M, B, V] of base + experts (and anti-experts [n, B, V]) after left-padded prompts."""
        logits: list[torch.Tensor | None] = [None] * len(self.engines)
        states: dict[int, EngineState] = {}
        for index in self._engines_for(anti):
            logits[index], states[index] = self.engines[index].prefill(ids, mask)
        return self._split(logits, anti) + (states,)

    def step(self, states: dict[int, EngineState], tokens: torch.Tensor, anti: bool = False
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits: list[torch.Tensor | None] = [None] * len(self.engines)
        started = time.perf_counter()
        for index, state in states.items():
            logits[index] = self.engines[index].step(state, tokens)
        self.forward_s += time.perf_counter() - started
        return self._split(logits, anti)

    def score(self, ids: torch.Tensor, mask: torch.Tensor, anti: bool = False
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Teacher-forced log-probs [M, B, L, V] (and anti-experts') for every position."""
        logits: list[torch.Tensor | None] = [None] * len(self.engines)
        for index in self._engines_for(anti):
            logits[index] = self.engines[index].score(ids, mask)
        return self._split(logits, anti)

    def _split(self, logits: list[torch.Tensor | None], anti: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self._logprobs(logits, self.roles), self._logprobs(logits, self.anti_roles()) if anti else None

    def params(self, method: str | None = None, weights: list[float] | None = None, alpha: float | None = None,
               temperature: float | None = None) -> FusionParams:
        """The rule to use: explicit arguments, else what `mighty fusion fit` stored for these cards and
        this base, else defaults (mixture; base weight 0.7 for mixture and product, an equal prior for
        the entropy rule, alpha 1 for proxy)."""
        fitted = self._fitted()
        method = method or (fitted.method if fitted else None) or DEFAULT_METHOD
        use_fit = fitted is not None and fitted.method == method
        stored_weights = tuple(fitted.weights) if use_fit and fitted.weights else None
        gate = None
        if use_fit and fitted.gate:
            gate = Gate.from_lists(fitted.gate, len(self.roles))
        if method == "learned" and gate is None:
            raise ValueError(f"no learned fusion is fitted for {', '.join(self.labels[1:])} on base {self.base!r}; "
                             "run `mighty fusion fit --method learned` first, or choose another method")
        return FusionParams(
            method=method,
            weights=tuple(weights) if weights else stored_weights or (
                default_weights(len(self.cards)) if method in ("mixture", "product") else None),
            alpha=alpha if alpha is not None else (fitted.alpha if use_fit and fitted.alpha is not None else 1.0),
            temperature=temperature if temperature is not None else (
                fitted.temperature if use_fit and fitted.temperature is not None else 1.0),
            gate=gate,
        )

    def _fitted(self):
        """Stored fit settings that match this base and exactly these cards, if any card has them."""
        names = [card.manifest.name for card in self.cards]
        for card in self.cards:
            fit = card.manifest.fusion
            experts = fit.experts or [card.manifest.name]
            if fit.method and fit.base and _same_model(fit.base, self.base) and experts == names:
                return fit
        return None


def _as_list(value: int | list[int] | None) -> list[int]:
    return [] if value is None else [value] if isinstance(value, int) else list(value)


_FUSED: OrderedDict[tuple, FusedModel] = OrderedDict()
_FUSED_LOCK = threading.Lock()
KEEP_FUSED = 3  # fused models kept loaded per process (each holds its own copy of the base)


def get_fused_model(base: str, cards: list[CardRef], shared: bool = True) -> FusedModel:
    """The process-wide fused model for these cards (by folder and version), loaded on first use."""
    key = (base, tuple((str(card.folder), card.manifest.version) for card in cards), shared)
    with _FUSED_LOCK:
        if key in _FUSED:
            _FUSED.move_to_end(key)
            return _FUSED[key]
        model = FusedModel(base, cards, shared)
        _FUSED[key] = model
        while len(_FUSED) > KEEP_FUSED:
            _FUSED.popitem(last=False)
        return model
