"""Fused decoding: at every step fuse the models' next-token distributions, pick a token, feed it to all.

The token loop is the runtime's (`rag.runtime.decode`): a fused model is just another stepper whose
next-token scores are the fused log-probs, so stop strings, the n-gram ban, sampling and streaming
behave exactly as for a single local model, and streamed text equals whole text. Several prompts
are decoded one after another (each model has one KV cache). Time spent outside the models'
forward passes (fusion, sampling, stop checks) is measured per run, since that is the overhead
fusion adds beyond the passes.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from experts.fusion.combine import ANTI_METHODS, FusionParams, fuse_with_weights
from experts.fusion.fused import FusedModel, FusedSession
from rag.runtime.decode import Decoded, decode, stream_rows
from rag.runtime.sampling import SamplingOptions

Generation = Decoded  # one finished sequence: text, token_ids, prompt_tokens, finish_reason


@dataclass
class DecodeStats:
    """Where one run's time went: the models' forward passes versus everything fusion adds
    (log-softmax of each model's logits, the rule, sampling, stop checks)."""

    steps: int = 0
    rows: int = 0
    tokens: int = 0
    prefill_s: float = 0.0
    forward_s: float = 0.0
    other_s: float = 0.0
    mean_weights: list[float] | None = None

    @property
    def overhead_ms_per_step(self) -> float:
        return 1000 * self.other_s / max(1, self.steps)

    @property
    def tokens_per_s(self) -> float:
        """Decoding speed after the prompt: the first token of each row comes from the prefill."""
        return max(0, self.tokens - self.rows) / max(1e-9, self.forward_s + self.other_s)


class _Fused:
    """The stepper decode() drives: fused log-probs [V] after the prompt and after each token."""

    def __init__(self, session: FusedSession, params: FusionParams, vocab_size: int) -> None:
        self.session, self.params, self.vocab_size = session, params, vocab_size
        self.weight_sum: torch.Tensor | None = None
        self.prefill_s = 0.0

    def _fuse(self, logprobs: torch.Tensor, anti: torch.Tensor | None) -> torch.Tensor:
        fused, weights = fuse_with_weights(logprobs.unsqueeze(1), self.params,
                                           anti.unsqueeze(1) if anti is not None else None)
        if weights is not None:
            self.weight_sum = weights[:, 0] if self.weight_sum is None else self.weight_sum + weights[:, 0]
        return fused[0]

    def start(self, prompt: list[int]) -> torch.Tensor:
        started = time.perf_counter()
        scores = self._fuse(*self.session.start(prompt))
        self.prefill_s = time.perf_counter() - started
        return scores

    def advance(self, token: int) -> torch.Tensor:
        return self._fuse(*self.session.advance(token))


class FusedDecoder:
    """Generate with one fusion rule over a FusedModel."""

    def __init__(self, model: FusedModel, params: FusionParams) -> None:
        self.model, self.params = model, params
        self.runtime = model.runtime
        self.eos_ids = model.eos_ids
        self.last_stats = DecodeStats()

    def detokenize(self, ids: list[int]) -> str:
        return self.runtime.detokenize(ids)

    def encode_chat(self, messages: list[dict[str, Any]]) -> list[int]:
        return self.runtime.chat_tokens(messages)

    def encode_text(self, prompt: str) -> list[int]:
        return self.runtime.encode(prompt)

    def _check(self, prompts: list[list[int]]) -> None:
        if not prompts or any(not p for p in prompts):
            raise ValueError("every prompt needs at least one token")
        too_big = [t for p in prompts for t in p if t >= self.model.vocab.size]
        if too_big:
            raise ValueError(f"prompt token {too_big[0]} is outside the fused vocabulary of "
                             f"{self.model.vocab.size} tokens ({self.model.vocab.describe()})")

    def generate(self, prompts: list[list[int]], options: SamplingOptions,
                 cancel: threading.Event | None = None) -> list[Generation]:
        """Complete token-id prompts (see encode_chat / encode_text); one Generation per prompt."""
        return self._run(prompts, options, cancel=cancel)

    def stream(self, prompts: list[list[int]], options: SamplingOptions, results: list[Generation] | None = None,
               cancel: threading.Event | None = None) -> Iterator[tuple[int, str]]:
        """(prompt index, text delta) pairs whose concatenation per prompt is exactly generate()'s text.

        Closing the iterator cancels the generation; `results`, when given, receives the Generations."""
        self._check(prompts)
        return stream_rows(lambda on_step, stop: self._run(prompts, options, on_step, stop), self, options.stop,
                           len(prompts), results, cancel)

    def _run(self, prompts: list[list[int]], options: SamplingOptions,
             on_step: Callable[[int, int], None] | None = None,
             cancel: threading.Event | None = None) -> list[Generation]:
        """Decode each prompt in turn; on_step gets (row, token) as tokens are chosen."""
        self._check(prompts)
        stats = DecodeStats(rows=len(prompts))
        weight_sum = None
        results = []
        with self.model.session(self.params.method in ANTI_METHODS,
                                experts=self.params.method != "contrastive") as session:
            for row, prompt in enumerate(prompts):
                if cancel is not None and cancel.is_set():
                    results.append(Generation("", [], len(prompt), "stop"))
                    continue
                stepper = _Fused(session, self.params, self.model.vocab.size)
                forward_before, started = self.model.forward_s, time.perf_counter()
                report = (lambda token, row=row: on_step(row, token)) if on_step is not None else None
                done = decode(stepper, self, prompt, options, report, cancel)
                elapsed = time.perf_counter() - started
                forward = self.model.forward_s - forward_before
                stats.prefill_s += stepper.prefill_s
                stats.forward_s += forward
                stats.other_s += elapsed - stepper.prefill_s - forward
                stats.steps += done.completion_tokens
                stats.tokens += done.completion_tokens
                if stepper.weight_sum is not None:
                    weight_sum = stepper.weight_sum if weight_sum is None else weight_sum + stepper.weight_sum
                results.append(done)
        if weight_sum is not None:
            stats.mean_weights = (weight_sum / max(1, stats.tokens)).tolist()
        self.last_stats = stats
        return results
