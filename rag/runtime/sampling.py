"""Choosing the next token from next-token scores: penalties, n-gram ban, temperature, top-k, top-p, greedy.

Every local generation (one model's logits, a LoRA card's, or a fusion's log-probs) picks its
tokens here, so sampling behaves the same on every path; these are the usual controls applied, in
transformers' order, to [B, V] scores.
"""
from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator


LOOP_NGRAM = 4  # chat generation bans repeating a generated 4-gram: small models loop under greedy decoding


class SamplingOptions(BaseModel):
    """Decoding controls. temperature 0 is greedy (then top-p and top-k are irrelevant)."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: int = Field(256, ge=1, le=4096)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, description="keep only the k most likely tokens; 0 keeps all")
    repetition_penalty: float = Field(1.0, ge=1.0, le=2.0,
                                      description="CTRL-style penalty on tokens already in prompt or output")
    no_repeat_ngram: int = Field(0, ge=0, le=16, description="ban repeating a generated n-gram; 0 is off")
    stop: list[str] = Field(default_factory=list, max_length=8)
    seed: int | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_list(cls, stop: object) -> object:
        if stop is None:
            return []
        return [stop] if isinstance(stop, str) else stop

    @field_validator("stop")
    @classmethod
    def _non_empty(cls, stop: list[str]) -> list[str]:
        return [s for s in stop if s]


def penalise_repeats(scores: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Make tokens already seen less likely: negative scores are multiplied, positive ones divided."""
    if penalty == 1.0:
        return scores
    penalised = torch.where(scores < 0, scores * penalty, scores / penalty)
    return torch.where(seen, penalised, scores)


def ban_repeated_ngrams(scores: torch.Tensor, generated: list[list[int]], n: int) -> torch.Tensor:
    """Forbid the token that would repeat an n-gram already generated in that row (prompt excluded)."""
    if n < 2:
        return scores
    for row, tokens in enumerate(generated):
        if len(tokens) < n:
            continue
        prefix = tokens[-(n - 1):]
        for i in range(len(tokens) - n + 1):
            if tokens[i:i + n - 1] == prefix:
                scores[row, tokens[i + n - 1]] = -float("inf")
    return scores


def top_k_filter(scores: torch.Tensor, k: int) -> torch.Tensor:
    if k <= 0 or k >= scores.shape[-1]:
        return scores
    kth = torch.topk(scores, k, dim=-1).values[..., -1:]
    return scores.masked_fill(scores < kth, -float("inf"))


def top_p_filter(scores: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches p (at least one)."""
    if p >= 1.0:
        return scores
    ordered, order = torch.sort(scores, descending=True, dim=-1)
    cumulative = torch.softmax(ordered, dim=-1).cumsum(-1)
    drop = cumulative - torch.softmax(ordered, dim=-1) >= p  # mass before this token already reaches p
    drop[..., 0] = False
    return scores.masked_fill(drop.scatter(-1, order, drop), -float("inf"))


def choose(scores: torch.Tensor, options: SamplingOptions, generator: torch.Generator | None) -> torch.Tensor:
    """The next token per row [B] from processed scores [B, V]."""
    if options.temperature <= 0:
        return scores.argmax(-1)
    scores = top_p_filter(top_k_filter(scores / options.temperature, options.top_k), options.top_p)
    return torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=generator).squeeze(-1)
