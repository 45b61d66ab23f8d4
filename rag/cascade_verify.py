"""The `verify` policy's confidence: the small model judges its own answer (AutoMix, Madaan et al. 2023).

Two ways to read the verdict, chosen by what the small model exposes:

- **logits** (a `local/` model on Mighty's runtime, where the full next-token distribution is at
  hand): one forward pass over the verification request, nothing sampled, and the confidence is
  P("yes") / (P("yes") + P("no")) at the verdict position, summed over the spellings of each word
  that are single tokens ("yes", "Yes", " yes", ...). Computed from log-sum-exp of the logits, so it
  is a probability in (0, 1) even when both words are unlikely. With k > 1 it is the mean over the
  first k orderings of the few-shot examples (`rag.prompts.VERIFY_ORDERINGS`), which cancels a
  small model's lean towards the verdict of the example it read last.
- **samples** (any other LiteLLM model, which gives no logprobs here): the share of "yes" among k
  verdicts sampled at temperature 1 with seeds 0..k-1 (greedy when k is 1), as before.

Sampled verdicts were measured to carry no signal with the 0.5B: its P("yes") sits around 0.2-0.3
for right and wrong answers alike, so three draws at temperature 1 gave one "yes" in three almost
everywhere, while the ordering of P("yes") itself still separates right from wrong answers somewhat
(benchmarks/RESULTS.md, "Cascades").

The request continues the answer conversation, so on the local runtime the answer prompt and the
answer it generated come from the KV cache (`LocalModel.next_token` reuses the longest cached
prefix); `cached_tokens` says how many prompt tokens were not read again. An answer that abstains
has confidence 0 without asking the model.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import numpy as np

from rag import llm
from rag.prompts import VERIFY_ORDERINGS, verify_messages

YES_SPELLINGS = ("yes", "Yes", "YES", " yes", " Yes", " YES")
NO_SPELLINGS = ("no", "No", "NO", " no", " No", " NO")
LOCAL_PREFIX = "local/"
_YES = re.compile(r"^\W*yes\b", re.IGNORECASE)


@dataclass
class Verification:
    """A verify confidence and what it cost."""

    confidence: float
    method: str  # "logits" | "samples" | "abstained"
    latency_ms: float = 0.0
    prompt_tokens: int = 0  # prompt tokens of every verification request, cached ones included
    cached_tokens: int = 0  # of those, how many the KV cache already held
    completion_tokens: int = 0
    per_ordering: list[float] = field(default_factory=list)  # logits: P(yes) ratio per example ordering
    ordering_ms: list[float] = field(default_factory=list)  # logits: the time of each ordering's pass
    mass: float | None = None  # logits: mean P(yes) + P(no), how much the model keeps to the two words


def word_ids(tokenize, spellings: tuple[str, ...]) -> list[int]:
    """Token ids of the spellings that are one token in this vocabulary."""
    ids = {tokens[0] for tokens in (tokenize(s) for s in spellings) if len(tokens) == 1}
    return sorted(ids)


def yes_share(logits: np.ndarray, yes: list[int], no: list[int]) -> tuple[float, float]:
    """P(yes) / (P(yes) + P(no)) from next-token logits, and P(yes) + P(no) (the two words' mass)."""
    row = np.asarray(logits, dtype=np.float64)
    log_yes, log_no = np.logaddexp.reduce(row[yes]), np.logaddexp.reduce(row[no])
    log_total = np.logaddexp.reduce(row)
    share = float(1.0 / (1.0 + np.exp(log_no - log_yes)))
    return share, float(np.exp(np.logaddexp(log_yes, log_no) - log_total))


def has_logits(options: llm.LLMOptions) -> bool:
    """A model on Mighty's own runtime, whose logits this process can read (not one behind an api_base)."""
    return options.model.startswith(LOCAL_PREFIX) and not options.api_base


def verify(small: llm.LLMOptions, messages: list[dict], answer: str, k: int, abstained: bool = False) -> Verification:
    """The small model's confidence in `answer` to the conversation `messages`."""
    if abstained:
        return Verification(0.0, "abstained")
    if has_logits(small):
        return by_logits(small, messages, answer, k)
    return by_samples(small, messages, answer, k)


def by_logits(small: llm.LLMOptions, messages: list[dict], answer: str, k: int) -> Verification:
    from rag.litellm_local import local_model
    from rag.litellm_provider import CustomLLMError
    from rag.runtime import LocalModelError

    started = time.perf_counter()
    try:
        model = local_model(small.model[len(LOCAL_PREFIX):])
    except CustomLLMError as exc:
        raise llm.LLMModelError(f"model {small.model!r} cannot verify: {exc.message}") from None
    tokenize = lambda text: model.tokenize(text, special=False, add_bos=False)  # noqa: E731
    yes, no = word_ids(tokenize, YES_SPELLINGS), word_ids(tokenize, NO_SPELLINGS)
    if not yes or not no:
        raise llm.LLMModelError(f"model {small.model!r} has no single token for yes or no; it cannot verify by logits")
    result = Verification(0.0, "logits")
    masses = []
    for ordering in range(min(k, len(VERIFY_ORDERINGS))):
        begun = time.perf_counter()
        try:
            step = model.next_token(verify_messages(messages, answer, ordering), timeout=small.timeout_s)
        except TimeoutError as exc:
            raise llm.LLMTimeout(str(exc)) from None
        except LocalModelError as exc:
            raise llm.LLMError(f"model {small.model!r} failed to verify: {exc}") from None
        share, mass = yes_share(step.logits.numpy(), yes, no)
        result.per_ordering.append(share)
        result.ordering_ms.append(_ms(begun))
        masses.append(mass)
        result.prompt_tokens += step.prompt_tokens
        result.cached_tokens += step.cached_tokens
    result.confidence = float(np.mean(result.per_ordering))
    result.mass = float(np.mean(masses))
    result.latency_ms = _ms(started)
    return result


def by_samples(small: llm.LLMOptions, messages: list[dict], answer: str, k: int) -> Verification:
    started = time.perf_counter()
    result = Verification(0.0, "samples")
    asked = verify_messages(messages, answer)
    yes = 0
    for seed in range(k):
        options = small.model_copy(update={"max_tokens": 2, "temperature": 1.0 if k > 1 else 0.0, "seed": seed})
        verdict = llm.complete(options, asked)
        result.prompt_tokens += verdict.prompt_tokens
        result.completion_tokens += verdict.completion_tokens
        yes += bool(_YES.match(verdict.text))
    result.confidence = yes / k
    result.latency_ms = _ms(started)
    return result


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
