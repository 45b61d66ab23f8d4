"""The one parser of cascade model strings: `cascade:<small>><large>[?policy=...&threshold=...&k=...]`.

A cascade is an LLM choice like any other (a request's `llm`, a collection's `default_llm`, what
`mighty cascade fit` stores), so it travels as one string and is checked where every model string
is checked (`rag.llm.check_model`). Everything that reads a cascade string goes through `parse`, and
everything that writes one through `CascadeSpec.model_string`, so the two cannot drift apart.

`>` never occurs in a LiteLLM model string, so it separates the two sides unambiguously; the
options after `?` are few and closed (unknown keys are refused, not ignored, so a typo such as
`treshold=0.9` cannot silently run with the default).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

PREFIX = "cascade:"
POLICIES = ("verify", "faithfulness", "router")
Policy = Literal["verify", "faithfulness", "router"]
DEFAULT_POLICY: Policy = "verify"
DEFAULT_THRESHOLD = 0.5
DEFAULT_SAMPLES = 3
MAX_SAMPLES = 8


class CascadeSpecError(ValueError):
    """A cascade string that cannot be used; the message says which part and why."""


@dataclass(frozen=True)
class CascadeSpec:
    small: str
    large: str
    policy: Policy = DEFAULT_POLICY
    threshold: float = DEFAULT_THRESHOLD
    samples: int = DEFAULT_SAMPLES  # verification samples (policy verify)

    def model_string(self) -> str:
        options = f"policy={self.policy}&threshold={self.threshold:g}"
        if self.policy == "verify":
            options += f"&k={self.samples}"
        return f"{PREFIX}{self.small}>{self.large}?{options}"

    def with_threshold(self, threshold: float) -> "CascadeSpec":
        return parse(CascadeSpec(self.small, self.large, self.policy, threshold, self.samples).model_string())


def is_cascade(model: str | None) -> bool:
    return bool(model) and model.startswith(PREFIX)


def parse(model: str) -> CascadeSpec:
    """The spec of a cascade string, or CascadeSpecError naming what is wrong."""
    if not is_cascade(model):
        raise CascadeSpecError(f"{model!r} is not a cascade: write cascade:<small>><large>")
    body, _, query = model[len(PREFIX):].partition("?")
    sides = body.split(">")
    if len(sides) != 2 or not all(side.strip() for side in sides):
        raise CascadeSpecError(f"cascade {model!r} needs exactly two models, written cascade:<small>><large>")
    small, large = (side.strip() for side in sides)
    for side in (small, large):
        if side.startswith(PREFIX):
            raise CascadeSpecError("a cascade cannot contain another cascade")
        if any(ch.isspace() for ch in side):
            raise CascadeSpecError(f"model {side!r} in cascade contains white space")
    if small == large:
        raise CascadeSpecError(f"cascade {model!r} has the same model on both sides")
    options = _options(query)
    policy = options.pop("policy", DEFAULT_POLICY)
    if policy not in POLICIES:
        raise CascadeSpecError(f"unknown cascade policy {policy!r}; use one of {', '.join(POLICIES)}")
    threshold = _number(options.pop("threshold", str(DEFAULT_THRESHOLD)), "threshold")
    if not 0.0 <= threshold <= 1.0:
        raise CascadeSpecError(f"cascade threshold must lie between 0 and 1, not {threshold:g}")
    samples_text = options.pop("k", str(DEFAULT_SAMPLES))
    if not samples_text.isdigit() or not 1 <= int(samples_text) <= MAX_SAMPLES:
        raise CascadeSpecError(f"cascade k (verification samples) must be a whole number from 1 to {MAX_SAMPLES}, "
                               f"not {samples_text!r}")
    if options:
        raise CascadeSpecError(f"unknown cascade option(s) {', '.join(sorted(options))}; "
                               "known: policy, threshold, k")
    return CascadeSpec(small, large, policy, threshold, int(samples_text))  # type: ignore[arg-type]


def _options(query: str) -> dict[str, str]:
    options: dict[str, str] = {}
    for part in filter(None, query.split("&")):
        key, sep, value = part.partition("=")
        if not sep or not key or not value:
            raise CascadeSpecError(f"cascade option {part!r} must be written key=value")
        if key in options:
            raise CascadeSpecError(f"cascade option {key!r} is given twice")
        options[key] = value
    return options


def _number(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise CascadeSpecError(f"cascade {name} must be a number, not {text!r}") from None
    if not math.isfinite(value):
        raise CascadeSpecError(f"cascade {name} must be finite, not {text!r}")
    return value
