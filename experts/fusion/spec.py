"""Model strings naming a fusion: `fusion:<base>+<card>[+<card>...]`.

The same string works in `/v1/chat/completions`, as a collection's LLM, and through LiteLLM as
`fusion/<base>+<card>` (LiteLLM's provider/model form). An empty base (`fusion:+card`) means the
first card's own base.
"""
from __future__ import annotations

from dataclasses import dataclass

PREFIX = "fusion:"
LITELLM_PREFIX = "fusion/"


class FusionSpecError(ValueError):
    """A fusion model string is malformed; the message shows the expected form."""


@dataclass(frozen=True)
class FusionSpec:
    base: str | None  # None: the cards' base
    cards: tuple[str, ...]

    def model_string(self) -> str:
        return PREFIX + "+".join([self.base or "", *self.cards])


def is_fusion_model(model: str) -> bool:
    return model.startswith((PREFIX, LITELLM_PREFIX))


def parse_fusion_model(model: str) -> FusionSpec:
    for prefix in (PREFIX, LITELLM_PREFIX):
        if model.startswith(prefix):
            body = model[len(prefix):]
            break
    else:
        raise FusionSpecError(f"{model!r} is not a fusion model; expected fusion:<base>+<card>[+<card>]")
    base, *cards = [part.strip() for part in body.split("+")]
    if not cards or any(not card for card in cards):
        raise FusionSpecError(f"{model!r} names no card; expected fusion:<base>+<card>[+<card>], "
                              "e.g. fusion:smollm2-135m-instruct+/path/to/card")
    return FusionSpec(base or None, tuple(cards))
