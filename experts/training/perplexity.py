"""Held-out negative log-likelihood and perplexity of a causal LM over packed blocks.

One function for every comparison (base vs card after training, fusion methods later), so figures
compare like with like: same rows, same token count, sums in float64, padding excluded.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from experts.training.batches import IGNORE, Blocks


@dataclass(frozen=True)
class NLL:
    total: float  # summed negative log-likelihood in nats
    tokens: int

    @property
    def mean(self) -> float:
        return self.total / self.tokens if self.tokens else float("nan")

    @property
    def perplexity(self) -> float:
        return math.exp(self.mean) if self.tokens else float("nan")


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-position NLL of labels[:, 1:] given logits[:, :-1]; 0 where the label is padding."""
    shifted = logits[:, :-1].float()
    targets = labels[:, 1:]
    losses = F.cross_entropy(shifted.reshape(-1, shifted.shape[-1]), targets.reshape(-1),
                             ignore_index=IGNORE, reduction="none")
    return losses.view(targets.shape)


def heldout_nll(model: Any, blocks: Blocks, batch_size: int = 8,
                advance: Callable[[int], None] | None = None) -> NLL:
    """Score every non-padding token after the first of each row; `advance(rows)` reports progress."""
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    try:
        with torch.no_grad():
            for start in range(0, blocks.rows, batch_size):
                input_ids = blocks.input_ids[start:start + batch_size]
                labels = blocks.labels[start:start + batch_size]
                logits = model(input_ids=input_ids).logits
                total += float(token_nll(logits, labels).double().sum())
                tokens += int((labels[:, 1:] != IGNORE).sum())
                if advance is not None:
                    advance(int(input_ids.shape[0]))
    finally:
        model.train(was_training)
    return NLL(total, tokens)
