"""Token blocks for training and scoring, packed per split so held-out text never meets training text.

Documents are tokenized with the base's own tokenizer (a card shares it, which is what makes token-level
fusion possible), each followed by EOS so the model learns where documents end, then concatenated and
cut into fixed blocks. Packing wastes no compute on padding; only the last, shorter block of a split
is padded, and its padding is masked out of the loss.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

IGNORE = -100  # the label value torch's cross-entropy skips


@dataclass(frozen=True)
class Blocks:
    """A split packed into rows of `block_size` tokens: `labels` is IGNORE where a row is padding."""

    input_ids: torch.Tensor  # (rows, block_size) int64
    labels: torch.Tensor  # (rows, block_size) int64
    documents: int

    @property
    def rows(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def tokens(self) -> int:
        """Tokens that are scored: every real token but the first of each row has a prediction."""
        real = (self.labels != IGNORE).sum(dim=1)
        return int((real - 1).clamp(min=0).sum())

    def select(self, rows: torch.Tensor | list[int]) -> "Blocks":
        index = torch.as_tensor(rows, dtype=torch.long)
        return Blocks(self.input_ids[index], self.labels[index], self.documents)


def tokenize(tokenizer: Any, texts: Iterable[str]) -> list[list[int]]:
    """Token ids of each text followed by EOS (no BOS or chat template: cards learn plain domain text)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the base tokenizer has no EOS token, so documents cannot be separated; "
                         "use a causal LM whose tokenizer defines eos_token")
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [ids + [eos] for ids in encoded]


def pack(token_lists: list[list[int]], block_size: int, pad_id: int, keep_tail: bool) -> Blocks:
    """Concatenate and cut into blocks. `keep_tail` keeps the last partial block (padded) so scoring
    sees every token; training drops it so every step sees the same amount of text."""
    if block_size < 2:
        raise ValueError(f"block size must be at least 2 tokens, got {block_size}")
    stream = [token for ids in token_lists for token in ids]
    full = len(stream) // block_size
    rows = [stream[i * block_size:(i + 1) * block_size] for i in range(full)]
    labels = [list(row) for row in rows]
    tail = stream[full * block_size:]
    if keep_tail and len(tail) >= 2:
        padding = block_size - len(tail)
        rows.append(tail + [pad_id] * padding)
        labels.append(tail + [IGNORE] * padding)
    if not rows:
        return Blocks(torch.zeros((0, block_size), dtype=torch.long), torch.zeros((0, block_size), dtype=torch.long),
                      len(token_lists))
    return Blocks(torch.tensor(rows, dtype=torch.long), torch.tensor(labels, dtype=torch.long), len(token_lists))


def spread(blocks: Blocks, max_tokens: int | None) -> Blocks:
    """At most `max_tokens` scored tokens, as rows spread evenly over the whole split (every held-out
    document region gets a say), chosen without randomness so base and card see the same rows."""
    if not max_tokens or blocks.tokens <= max_tokens or blocks.rows == 0:
        return blocks
    per_row = blocks.input_ids.shape[1] - 1
    wanted = max(1, min(blocks.rows, max_tokens // per_row))
    step = blocks.rows / wanted
    return blocks.select([int(i * step) for i in range(wanted)])
