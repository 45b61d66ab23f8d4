"""One entry point for everything that serves fusion (REST router, LiteLLM provider, CLI).

It turns a model string or a (base, cards, method) request into a ready FusedDecoder over a
process-wide cached FusedModel, and every expected failure into a FusionError carrying the HTTP
status it deserves: an unknown card is 404, a card that cannot be fused is 422.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator

from experts.fusion.cards import CardNotFound, CardRef, resolve_card
from experts.fusion.decoder import FusedDecoder, Generation
from experts.fusion.fused import FusedModel, get_fused_model
from rag.runtime.sampling import SamplingOptions
from experts.fusion.spec import FusionSpecError, parse_fusion_model
from experts.fusion.vocab import VocabularyMismatch
from experts.manifest import ManifestError
from experts.models import BaseNotAllowed, ModelLoadError, check_base
from rag.runtime import LocalModelError
from rag.runtime.decode import Deadline


class FusionError(ValueError):
    """A fusion request that cannot be served; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


def resolve_cards(names: list[str] | tuple[str, ...]) -> list[CardRef]:
    if not names:
        raise FusionError("name at least one card")
    try:
        return [resolve_card(name, allow_paths=False) for name in names]  # clients name registered cards
    except CardNotFound as error:
        raise FusionError(str(error), 404) from None
    except ManifestError as error:
        raise FusionError(str(error), 422) from None


def load_fused(base: str | None, cards: list[CardRef]) -> FusedModel:
    """The fused model of base + cards (default base: the first card's), from the process-wide cache."""
    try:
        return get_fused_model(base or cards[0].base, cards)
    except VocabularyMismatch as error:
        raise FusionError(str(error), 422) from None
    except (ModelLoadError, LocalModelError) as error:
        raise FusionError(str(error), 404) from None
    except ValueError as error:
        raise FusionError(str(error), 422) from None


def fused_decoder(model: FusedModel, method: str | None = None, weights: list[float] | None = None,
                  alpha: float | None = None, temperature: float | None = None, beta: float | None = None,
                  plausibility: float | None = None) -> FusedDecoder:
    """A decoder over a loaded fused model with the requested rule (default: the cards' fitted rule, else
    mixture); a rule that cannot be used (unknown, unfitted, wrong weights) is a FusionError (422)."""
    try:
        return FusedDecoder(model, model.params(method, weights, alpha, temperature, beta, plausibility))
    except ValueError as error:
        raise FusionError(str(error), 422) from None


def load_decoder(base: str | None, cards: list[CardRef], method: str | None = None,
                 weights: list[float] | None = None, alpha: float | None = None,
                 temperature: float | None = None, beta: float | None = None,
                 plausibility: float | None = None) -> FusedDecoder:
    """A decoder for base + cards with the requested rule (default: the cards' fitted rule, else mixture)."""
    return fused_decoder(load_fused(base, cards), method, weights, alpha, temperature, beta, plausibility)


def model_cards(model: str) -> tuple[str | None, list[CardRef]]:
    """The base (None: the cards' own) and the resolved cards a `fusion:<base>+<card>[+<card>]` (or
    `fusion/...`) model string names, without loading anything."""
    try:
        spec = parse_fusion_model(model)
    except FusionSpecError as error:
        raise FusionError(str(error), 422) from None
    check_client_base(spec.base)
    return spec.base, resolve_cards(spec.cards)


def decoder_for_model(model: str, method: str | None = None, weights: list[float] | None = None,
                      alpha: float | None = None, temperature: float | None = None) -> FusedDecoder:
    """A decoder for a `fusion:<base>+<card>[+<card>]` (or `fusion/...`) model string."""
    base, cards = model_cards(model)
    return load_decoder(base, cards, method, weights, alpha, temperature)


def check_client_base(base: str | None) -> None:
    """A base named by a client must be on the allow-list (a card's own base was checked at upload)."""
    if base is not None:
        try:
            check_base(base)
        except BaseNotAllowed as error:
            raise FusionError(str(error), 422) from None


def chat_generation(decoder: FusedDecoder, messages: list[dict], options: SamplingOptions,
                    timeout: float | None = None, cancel: threading.Event | None = None) -> Generation:
    """Complete one chat; GenerationTimeout (like the local models') when `timeout` seconds pass."""
    cancel = cancel or threading.Event()
    deadline = Deadline(cancel, timeout)
    try:
        result = decoder.generate([decoder.encode_chat(messages)], options, cancel=cancel)[0]
    finally:
        deadline.close(decoder.model.describe(), timeout)
    return result


def chat_stream(decoder: FusedDecoder, messages: list[dict], options: SamplingOptions,
                timeout: float | None = None, cancel: threading.Event | None = None,
                results: list[Generation] | None = None) -> Iterator[str]:
    """Text deltas of one chat completion; their concatenation is chat_generation's text."""
    cancel = cancel or threading.Event()
    deadline = Deadline(cancel, timeout)
    try:
        for _, delta in decoder.stream([decoder.encode_chat(messages)], options, results, cancel):
            yield delta
    finally:
        deadline.close(decoder.model.describe(), timeout)
