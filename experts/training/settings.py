"""Training settings, with defaults tuned for CPU: a card on the full pg-essays corpus in about ten
minutes on two cores that still cuts held-out perplexity by at least 20% (benchmarks/RESULTS.md).

On CPU the budget is compute, not data: ten minutes buys a few tens of thousands of training tokens,
far less than one epoch of a real corpus, so the defaults favour many small, high-learning-rate updates
over epochs, and a held-out score on a fixed, evenly spread sample of held-out tokens.
"""
from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_BASE = "smollm2-135m-instruct"
ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# 80 steps x 2 blocks x 256 tokens = 41k training tokens: about 8 minutes at the ~90 tokens/s one busy
# core sustains, plus two held-out scorings of 4,096 tokens. With lr 3e-3 this cut pg-essays held-out
# perplexity by 30% in tuning, where lr 6e-3 gave 22% and 10k tokens gave 21-22%.
DEFAULT_STEPS = 80


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
    last_layers: int | None = Field(None, ge=1, description="adapt only the top N layers (None: all); "
                                                             "backward then stops below them")
    seed: int = 0
    heldout_fraction: float = Field(0.1, gt=0, lt=1)
    eval_tokens: int | None = Field(4096, ge=0, description="held-out tokens scored (0 or None: all)")
    eval_batch: int = Field(8, ge=1, le=512)

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
        return DEFAULT_STEPS

    def fingerprint(self, corpus_sha256: str, heldout: list[str]) -> str:
        """What a checkpoint must match to be resumed: everything that changes the trained weights."""
        payload = self.model_dump(mode="json", exclude={"eval_tokens", "eval_batch"})
        if payload["steps"] is None and payload["epochs"] is None:
            payload["steps"] = DEFAULT_STEPS  # the default and an explicit --steps 80 are the same run
        payload.update(corpus_sha256=corpus_sha256, heldout=heldout)
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()

