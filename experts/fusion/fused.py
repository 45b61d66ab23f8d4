"""A fused model: a base and expert cards giving per-model log-probs over a shared vocabulary.

Setting one up checks vocabularies first (tokenizers only, so another model family is refused
before any weights load), then gets each model from the local runtime: the base GGUF on llama.cpp,
each LoRA card as the same GGUF with its adapter applied at run time (memory-mapped weights are
shared, each has its own KV cache), a full-model card on transformers. Anti-experts for
proxy-tuning are each card's own base; when that is the fused base (the usual case) it is the
base's role, at no cost.

Each decoding step evaluates the models side by side in threads (llama.cpp releases the GIL), each
given its share of the cores: small models on a CPU are bound by reading weights, so two contexts
of one thread each finish a step sooner than the same two one after the other with two threads.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from experts.fusion.cards import CardRef
from experts.fusion.combine import CD_BETA, CD_PLAUSIBILITY, FusionParams, Gate, default_weights
from experts.fusion.vocab import VocabPlan, plan_vocabulary
from experts.models import HUB_ALIASES, load_tokenizer, resolve_base, runtime_model
from rag.runtime import LocalModel, LocalModelError, resolve_model

DEFAULT_METHOD = "mixture"


@dataclass(frozen=True)
class Role:
    label: str
    model: LocalModel


_TOKENIZERS: dict[str, Any] = {}
_TOKENIZERS_LOCK = threading.Lock()


def tokenizer_of(model: str, folder: Path | None = None) -> Any:
    """A model's tokenizer without loading (or converting) its weights; cached per process."""
    from transformers import AutoTokenizer

    from rag.runtime.convert import local_tokenizer_source
    from rag.runtime.registry import LOCAL_MODELS

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
    """Whether two base references name the same weights (without loading or converting anything)."""
    a, b = HUB_ALIASES.get(a, a), HUB_ALIASES.get(b, b)
    if a == b:
        return True
    try:
        return resolve_model(a).path.resolve() == resolve_model(b).path.resolve()
    except LocalModelError:
        return resolve_base(a)[0] == resolve_base(b)[0]


class UndeclaredBase(ValueError):
    """A card asked to steer a base its manifest does not declare (`model.steers`)."""


def check_steers(card: CardRef, base: str) -> None:
    """A card steers only the bases it declares (its own, plus `model.steers`): sharing a vocabulary makes
    fusion possible, the declaration says the card's team measured it and stands behind it."""
    if any(_same_model(declared, base) for declared in card.manifest.model.steerable):
        return
    raise UndeclaredBase(f"card {card.label} (trained on {card.base!r}) does not declare that it steers base "
                         f"{base!r}; it declares {', '.join(repr(b) for b in card.manifest.model.steerable)}. Add "
                         f"{base!r} to model.steers in its card.toml (the vocabularies must match, which fusion "
                         "checks), or fuse it with a declared base")


class FusedModel:
    """Base + cards on the runtime; a generation holds every model's lock, so runs are serialised."""

    def __init__(self, base: str, cards: list[CardRef], allow_truncation: bool = True) -> None:
        self.base, self.cards = base, list(cards)
        self.tokenizer = tokenizer_of(base)
        others = [(f"{card.label} (on {card.base})", tokenizer_of(card.base, card.full)) for card in cards]
        self.vocab: VocabPlan = plan_vocabulary((base, self.tokenizer), others, allow_truncation)
        for card in cards:
            check_steers(card, base)
        self.runtime = runtime_model(base)
        self.roles: list[Role] = [Role(base, self.runtime)] + [
            Role(card.label, runtime_model(card.base, card.adapter, card.full)) for card in cards]
        self._anti: list[Role] | None = None
        narrow = {role.label: role.model.vocab_size for role in self.roles if role.model.vocab_size < self.vocab.size}
        if narrow:
            raise ValueError(f"models {narrow} output fewer logits than the {self.vocab.size}-token vocabulary")
        self.eos_ids = frozenset(i for i in self.runtime.eos_ids if i < self.vocab.size)
        self.lock = threading.Lock()
        self.forward_s = 0.0  # time inside the models' decoding steps, so callers can tell fusion's own cost
        self._pool: ThreadPoolExecutor | None = None

    def describe(self) -> str:
        return "+".join([self.base, *[card.label for card in self.cards]])

    @property
    def labels(self) -> list[str]:
        return [role.label for role in self.roles]

    def anti_roles(self) -> list[Role]:
        """Each card's untuned base (proxy-tuning's anti-expert), loaded on first use."""
        if self._anti is None:
            anti = []
            for card in self.cards:
                if _same_model(card.base, self.base):
                    anti.append(self.roles[0])
                    continue
                plan = plan_vocabulary((self.base, self.tokenizer), [(card.base, tokenizer_of(card.base))])
                if plan.size < self.vocab.size:
                    raise ValueError(f"anti-expert {card.base!r} has a smaller vocabulary ({plan.size}) than "
                                     f"the fusion ({self.vocab.size}); proxy fusion cannot use it")
                anti.append(Role(card.base, runtime_model(card.base)))
            self._anti = anti
        return self._anti

    def _roles(self, experts: bool) -> list[Role]:
        return self.roles if experts else self.roles[:1]

    def _models(self, anti: bool, experts: bool = True) -> list[LocalModel]:
        """Distinct models to evaluate (a model serving several roles runs once)."""
        roles = self._roles(experts) + (self.anti_roles() if anti else [])
        return list({id(role.model): role.model for role in roles}.values())

    @contextmanager
    def session(self, anti: bool = False, experts: bool = True) -> Iterator["FusedSession"]:
        """Exclusive use of every model for one sequence; their threads split the cores meanwhile.
        experts=False leaves the cards out (contrastive decoding needs only the base and the amateurs)."""
        models = self._models(anti, experts)
        with self.lock, ExitStack() as stack:
            for model in sorted(models, key=id):  # one global order: no deadlock with other users
                stack.enter_context(model.lock)
            share = max(1, max(m.threads for m in models) // len(models))
            previous = [m.threads for m in models]
            for model in models:
                model.set_threads(share)
            if len(models) > 1 and self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="fused-step")
            try:
                yield FusedSession(self, models, anti, experts)
            finally:
                for model, threads in zip(models, previous):
                    model.set_threads(threads)

    def _logprobs(self, logits: dict[int, torch.Tensor], roles: list[Role]) -> torch.Tensor:
        picked = [logits[id(role.model)][..., :self.vocab.size] for role in roles]
        return torch.log_softmax(torch.stack(picked).float(), dim=-1)

    def _split(self, logits: dict[int, torch.Tensor], anti: bool, experts: bool = True
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return (self._logprobs(logits, self._roles(experts)),
                self._logprobs(logits, self.anti_roles()) if anti else None)

    def _each(self, models: list[LocalModel], call: Any) -> dict[int, torch.Tensor]:
        if len(models) == 1 or self._pool is None:
            return {id(m): call(m) for m in models}
        futures = {id(m): self._pool.submit(call, m) for m in models}
        return {key: future.result() for key, future in futures.items()}

    def score(self, tokens: list[int], anti: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Teacher-forced log-probs [M, L, V] (and anti-experts' [n, L, V]) at every position of one text."""
        with self.session(anti) as session:
            return self._split(self._each(session.models, lambda m: m.score(tokens)), anti)

    def params(self, method: str | None = None, weights: list[float] | None = None, alpha: float | None = None,
               temperature: float | None = None, beta: float | None = None,
               plausibility: float | None = None) -> FusionParams:
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
            beta=beta if beta is not None else (fitted.beta if use_fit and fitted.beta is not None else CD_BETA),
            plausibility=plausibility if plausibility is not None else (
                fitted.plausibility if use_fit and fitted.plausibility is not None else CD_PLAUSIBILITY),
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


class FusedSession:
    """One sequence through every model: `start` after the prompt, `advance` per chosen token."""

    def __init__(self, fused: FusedModel, models: list[LocalModel], anti: bool, experts: bool = True) -> None:
        self.fused, self.models, self.anti, self.experts = fused, models, anti, experts

    def start(self, prompt: list[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Log-probs [M, V] of base + experts (and anti-experts [n, V]) after the prompt."""
        return self.fused._split(self.fused._each(self.models, lambda m: m.prefill(prompt)), self.anti, self.experts)

    def advance(self, token: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        started = time.perf_counter()
        logits = self.fused._each(self.models, lambda m: m.step(token))
        self.fused.forward_s += time.perf_counter() - started
        return self.fused._split(logits, self.anti, self.experts)


_FUSED: OrderedDict[tuple, FusedModel] = OrderedDict()
_FUSED_LOCK = threading.Lock()
KEEP_FUSED = 3  # fused models kept per process (their models live in the runtime's cache)


def get_fused_model(base: str, cards: list[CardRef]) -> FusedModel:
    """The process-wide fused model for these cards (by folder and version), loaded on first use."""
    key = (base, tuple((str(card.folder), card.manifest.version) for card in cards))
    with _FUSED_LOCK:
        if key in _FUSED:
            _FUSED.move_to_end(key)
            return _FUSED[key]
        model = FusedModel(base, cards)
        _FUSED[key] = model
        while len(_FUSED) > KEEP_FUSED:
            _FUSED.popitem(last=False)
        return model
