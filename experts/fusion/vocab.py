"""Vocabulary compatibility: fused models must agree on what every token id means.

Token-level fusion adds or multiplies distributions id by id, so two models may only be fused when
id k is the same token string in both. A model may have extra tokens at the end (a tokenizer that
added a pad or chat token); like proxy-tuning, fusion then works on the shared prefix and the extra
ids are never produced. Anything else (another model family) is refused before weights are loaded,
with an error naming both models.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MIN_SHARED_FRACTION = 0.9  # a "shared prefix" covering less than this of a vocabulary is another family


class VocabularyMismatch(ValueError):
    """Two models cannot be fused: their token ids mean different things."""


@dataclass(frozen=True)
class VocabPlan:
    """The vocabulary the fusion works on: ids [0, size), and what each model loses beyond it."""

    size: int
    truncated: dict[str, int] = field(default_factory=dict)  # model label -> extra ids ignored

    def describe(self) -> str:
        if not self.truncated:
            return f"shared vocabulary of {self.size} tokens"
        dropped = ", ".join(f"{label}: {n} extra" for label, n in self.truncated.items())
        return f"shared prefix of {self.size} tokens ({dropped} ignored)"


def id_to_token(tokenizer: Any) -> list[str | None]:
    """Every id's token string, added tokens included (len(tokenizer) ids)."""
    table: list[str | None] = [None] * len(tokenizer)
    for token, index in tokenizer.get_vocab().items():
        if 0 <= index < len(table):
            table[index] = token
    return table


def plan_vocabulary(base: tuple[str, Any], others: list[tuple[str, Any]],
                    allow_truncation: bool = True) -> VocabPlan:
    """Check every (label, tokenizer) in `others` against the base; the shared vocabulary or an error.

    With `allow_truncation=False` only identical vocabularies pass.
    """
    base_label, base_tokenizer = base
    base_ids = id_to_token(base_tokenizer)
    size, lengths = len(base_ids), {base_label: len(base_ids)}
    for label, tokenizer in others:
        ids = id_to_token(tokenizer) if tokenizer is not base_tokenizer else base_ids
        _check_pair(base_label, base_ids, label, ids, allow_truncation)
        lengths[label] = len(ids)
        size = min(size, len(ids))
    truncated = {label: n - size for label, n in lengths.items() if n > size}
    return VocabPlan(size, truncated)


def _check_pair(base_label: str, base_ids: list[str | None], label: str, ids: list[str | None],
                allow_truncation: bool) -> None:
    shared = min(len(base_ids), len(ids))
    differing = next((i for i in range(shared) if base_ids[i] != ids[i]), None)
    fix = (f"fusion needs models with the same tokenizer: train the card on {base_label!r} (or a model of its "
           "family) or fuse it with its own base")
    if differing is not None:
        raise VocabularyMismatch(
            f"cannot fuse {label!r} with base {base_label!r}: their vocabularies differ ({len(ids)} vs "
            f"{len(base_ids)} tokens; id {differing} is {ids[differing]!r} in {label!r} but "
            f"{base_ids[differing]!r} in {base_label!r}); {fix}")
    if len(ids) != len(base_ids):
        if not allow_truncation:
            raise VocabularyMismatch(
                f"cannot fuse {label!r} with base {base_label!r}: {len(ids)} vs {len(base_ids)} tokens and "
                "truncation to the shared prefix is turned off")
        if shared < MIN_SHARED_FRACTION * max(len(ids), len(base_ids)):
            raise VocabularyMismatch(
                f"cannot fuse {label!r} with base {base_label!r}: they share only the first {shared} of "
                f"{max(len(ids), len(base_ids))} token ids; {fix}")
