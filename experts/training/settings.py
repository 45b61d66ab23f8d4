"""Training settings, with defaults tuned for CPU per base: a card on the full pg-essays corpus within
25 minutes on two cores that still cuts held-out perplexity by at least 20% (benchmarks/RESULTS.md).

On CPU the budget is compute, not data: ten minutes buys a few tens of thousands of training tokens,
far less than one epoch of a real corpus, so the defaults favour many small, high-learning-rate updates
over epochs, and a held-out score on a fixed, evenly spread sample of held-out tokens.
"""
from __future__ import annotations

import hashlib
import json
import os

from pydantic import BaseModel, ConfigDict, Field, model_validator

SMOLLM2_BASE = "smollm2-135m-instruct"  # the fast base: tests name it explicitly
QWEN05_BASE = "qwen2.5-coder-0.5b-instruct"
DEFAULT_BASE = QWEN05_BASE  # steers qwen2.5-coder-1.5b-instruct (same vocabulary) by fusion
CARD_BASE_ENV = "MIGHTY_CARD_BASE"  # overrides DEFAULT_BASE (the test suite sets SmolLM2, the fast base)
ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# 80 steps x 2 blocks x 256 tokens = 41k training tokens: about 8 minutes at the ~90 tokens/s one busy
# core sustains, plus two held-out scorings of 4,096 tokens. With lr 3e-3 this cut pg-essays held-out
# perplexity by 30% in tuning, where lr 6e-3 gave 22% and 10k tokens gave 21-22%.
DEFAULT_STEPS = 80
# Per-base defaults: what differs from the field defaults for a base, filled in only where the user
# gave nothing. Qwen2.5-Coder-0.5B costs ~4x SmolLM2 per token, so its card adapts only the top 8 of
# 24 layers (backward stops there: ~1.5x cheaper per step) for 64 steps of 2 x 256 tokens (33k tokens)
# at lr 2e-3; measured in benchmarks/RESULTS.md ("Cards on the 0.5B model").
BASE_DEFAULTS: dict[str, dict[str, object]] = {
    SMOLLM2_BASE: {"steps": DEFAULT_STEPS},
    QWEN05_BASE: {"steps": 64, "last_layers": 8, "lr": 2e-3},
}


# Larger bases a card on this base may steer by default (written to the card's model.steers): same
# tokenizer vocabulary, measured in benchmarks/RESULTS.md ("Fusion with a larger base").
DEFAULT_STEERS: dict[str, tuple[str, ...]] = {QWEN05_BASE: ("qwen2.5-coder-1.5b-instruct",)}


def default_base() -> str:
    """The base a card is trained on when none is named: $MIGHTY_CARD_BASE, else DEFAULT_BASE."""
    return os.environ.get(CARD_BASE_ENV, "").strip() or DEFAULT_BASE


def default_steps(base: str) -> int:
    return int(BASE_DEFAULTS.get(base, {}).get("steps", DEFAULT_STEPS))  # type: ignore[arg-type]


class TrainSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    base: str = DEFAULT_BASE
    steps: int | None = Field(None, ge=1, description="optimizer steps (default: DEFAULT_STEPS unless epochs)")
    epochs: float | None = Field(None, gt=0, description="passes over the training blocks instead of steps")
    batch_size: int = Field(2, ge=1, le=512, description="blocks per optimizer step")
    micro_batch: int = Field(2, ge=1, le=512, description="blocks per forward pass (gradient accumulation)")
    block_size: int = Field(256, ge=8, le=8192, description="tokens per block")
    lr: float = Field(3e-3, gt=0, le=1.0)
    warmup_fraction: float = Field(0.05, ge=0, lt=1)
    min_lr_fraction: float = Field(0.1, ge=0, le=1, description="cosine decays to lr x this")
    weight_decay: float = Field(0.0, ge=0)
    rank: int = Field(16, ge=1, le=512)
    alpha: float | None = Field(None, gt=0, description="LoRA scale numerator (default 2 x rank)")
    dropout: float = Field(0.0, ge=0, lt=1)
    targets: tuple[str, ...] = ALL_PROJECTIONS
    last_layers: int | None = Field(None, ge=0, description="adapt only the top N layers (None or 0: all); "
                                                             "backward then stops below them")
    seed: int = 0
    heldout_fraction: float = Field(0.1, gt=0, lt=1)
    eval_tokens: int | None = Field(4096, ge=0, description="held-out tokens scored (0 or None: all)")
    eval_batch: int = Field(8, ge=1, le=512)

    @model_validator(mode="before")
    @classmethod
    def _base_defaults(cls, data: object) -> object:
        """Fill the base's own defaults for every setting the caller left out (steps only without epochs)."""
        if not isinstance(data, dict):
            return data
        filled = dict(data)
        if filled.get("base") is None:
            filled["base"] = default_base()
        for key, value in BASE_DEFAULTS.get(str(filled["base"]), {}).items():
            if key == "steps" and filled.get("epochs") is not None:
                continue
            if filled.get(key) is None:
                filled[key] = value
        return filled

    @model_validator(mode="after")
    def _steps_or_epochs(self) -> "TrainSettings":
        if self.steps is not None and self.epochs is not None:
            raise ValueError("give --steps or --epochs, not both")
        if self.batch_size % self.micro_batch and self.micro_batch < self.batch_size:
            raise ValueError(f"batch size {self.batch_size} must be a multiple of micro batch {self.micro_batch}")
        return self

    @property
    def lora_alpha(self) -> float:
        return self.alpha if self.alpha is not None else 2.0 * self.rank

    def total_steps(self, train_rows: int) -> int:
        if self.steps is not None:
            return self.steps
        if self.epochs is not None:
            return max(1, -(-int(self.epochs * train_rows) // self.batch_size))
        return default_steps(self.base)

    def fingerprint(self, corpus_sha256: str, heldout: list[str]) -> str:
        """What a checkpoint must match to be resumed: everything that changes the trained weights."""
        payload = self.model_dump(mode="json", exclude={"eval_tokens", "eval_batch"})
        if payload["steps"] is None and payload["epochs"] is None:
            payload["steps"] = default_steps(self.base)  # the default and an explicit --steps N are one run
        payload.update(corpus_sha256=corpus_sha256, heldout=heldout)
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()

