"""Whether drafting pays: the cost-aware switch of speculative decoding.

A speculative round drafts k guesses (k draft steps) and verifies them in one target pass over k+1
positions; it yields the accepted guesses plus the target's own token. With each guess accepted
with probability a until the first rejection (Leviathan et al. 2023), a round yields
E = (1 - a^(k+1)) / (1 - a) tokens, so against plain target steps the predicted speed-up is

    E / (k * draft_cost + verify_cost)

with both costs in units of one plain target step. Where a step is memory-bound (a GPU, many cores)
verifying k+1 positions costs about one step and a small draft is cheap, so speculation pays; on 2
shared cores the 1.5B's batch of 5 cost about 3.3 steps and each 0.5B guess a third to a half of a
step, so at 0.57 acceptance the predicted speed-up is about 0.45 and 0.65x was measured
(benchmarks/RESULTS.md, "Speculative decoding").

`DraftCost` keeps running (exponentially weighted) measurements for one model pair: the time of a
plain target step, of a draft guess, of a verification pass and the acceptance rate. After a few
rounds, when the prediction falls below `min_speedup`, drafting stops and the target steps alone
(outputs are unchanged either way: only the target's logits ever choose tokens). Conditions change
(load, prompt length), so after `retry_after` plain tokens drafting is measured again; while drafting,
one plain step every `probe_every` rounds keeps the step time current.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

EWMA_WEIGHT = 0.2  # the newest measurement's weight once a few have been seen


def expected_tokens(acceptance: float, guesses: int) -> float:
    """Tokens one round yields: accepted guesses (each with probability `acceptance`, until the first
    rejection) plus the target's own token."""
    a = min(max(acceptance, 0.0), 1.0)
    if a >= 1.0:
        return guesses + 1.0
    return (1.0 - a ** (guesses + 1)) / (1.0 - a)


def predicted_speedup(acceptance: float, guesses: float, draft_cost: float, verify_cost: float) -> float:
    """Plain-step time per token over speculative time per token; costs relative to one plain target
    step (`draft_cost` per guess, `verify_cost` for the pass over guesses + 1 positions)."""
    spent = guesses * draft_cost + verify_cost
    return expected_tokens(acceptance, round(guesses)) / spent if spent > 0 else float("inf")


@dataclass
class Ewma:
    """A running mean that forgets: the plain mean for the first 1/weight values, then exponential."""

    value: float | None = None
    count: int = 0

    def add(self, x: float) -> None:
        self.count += 1
        weight = max(EWMA_WEIGHT, 1.0 / self.count)
        self.value = x if self.value is None else (1 - weight) * self.value + weight * x


def default_min_speedup() -> float:
    """`MIGHTY_DRAFT_MIN_SPEEDUP` (default 1.0: draft only when predicted faster); 0 never switches off."""
    return float(os.environ.get("MIGHTY_DRAFT_MIN_SPEEDUP", "1.0"))


@dataclass
class DraftCost:
    """Measurements and the drafting decision for one draft/target pair (kept across generations)."""

    min_speedup: float = field(default_factory=default_min_speedup)
    warmup_rounds: int = 4  # rounds measured (since drafting last started) before it may be switched off
    retry_after: int = 128  # plain tokens before drafting is measured again
    probe_every: int = 16  # while drafting, one plain step per this many rounds keeps step_ms current
    step_ms: Ewma = field(default_factory=Ewma)  # one plain target step
    draft_ms: Ewma = field(default_factory=Ewma)  # one draft guess
    verify_ms: Ewma = field(default_factory=Ewma)  # one verification pass (guesses + 1 positions)
    guesses: Ewma = field(default_factory=Ewma)  # guesses per round
    accepted: Ewma = field(default_factory=Ewma)  # guesses accepted per round
    judged: Ewma = field(default_factory=Ewma)  # guesses judged per round (accepted + the one rejected, if any)
    on: bool = True
    rounds: int = 0  # rounds since drafting last started
    plain: int = 0  # plain steps since drafting stopped, or since the last probe while drafting
    switched_off: int = 0  # how many times the rule stopped drafting (for benchmarks and tests)

    def speedup(self) -> float | None:
        """The predicted speed-up of drafting from the measurements so far; None before any."""
        values = (self.step_ms.value, self.draft_ms.value, self.verify_ms.value, self.guesses.value)
        if any(v is None for v in values) or not self.step_ms.value or not self.judged.value:
            return None
        step, draft, verify, guesses = values
        return predicted_speedup(self.acceptance(), guesses, draft / step, verify / step)

    def acceptance(self) -> float:
        """The chance a guess is accepted once reached: accepted over judged guesses (guesses after a
        rejection are never judged, so counting them would understate it)."""
        return (self.accepted.value or 0.0) / self.judged.value if self.judged.value else 0.0

    def drafting(self) -> bool:
        """Whether the next step should draft (False: a plain target step, which `plain_step` times)."""
        if self.min_speedup <= 0:
            return True
        if not self.on:
            if self.plain >= self.retry_after:
                self.on, self.rounds, self.plain = True, 0, 0
                return True
            return False
        if self.step_ms.value is None or self.plain >= self.probe_every:
            return False  # measure a plain step: the speed-up is relative to one
        return True

    def plain_step(self, ms: float) -> None:
        self.step_ms.add(ms)
        self.plain = 0 if self.on else self.plain + 1

    def round(self, guesses: int, draft_ms: float | None, verify_ms: float) -> None:
        """A round drafted `guesses` (in draft_ms; None when the draft first caught up with many tokens)
        and verified them (in verify_ms)."""
        if guesses <= 0:
            return
        self.guesses.add(guesses)
        if draft_ms is not None:
            self.draft_ms.add(draft_ms / guesses)
        self.verify_ms.add(verify_ms)
        self.rounds += 1
        self.plain += 1  # counts towards the next probe

    def verdict(self, accepted: int, rejected: bool) -> None:
        """A round ended: `accepted` guesses matched the target, then one was `rejected` (or none was left)."""
        self.accepted.add(accepted)
        self.judged.add(accepted + int(rejected))
        speedup = self.speedup()
        if self.on and self.min_speedup > 0 and self.rounds >= self.warmup_rounds and speedup is not None \
                and speedup < self.min_speedup:
            self.on, self.plain = False, 0
            self.switched_off += 1
