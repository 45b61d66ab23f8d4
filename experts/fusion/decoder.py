"""Fused decoding: at every step fuse the models' next-token distributions, pick a token, feed it to all.

Prompts are batched (left-padded); each engine keeps its own KV cache. `generate` and `stream` run
the very same loop (`_run`); streaming only watches the tokens as they are chosen, so under greedy
decoding both give identical text. Time spent outside the models' forward passes (fusion, sampling,
stop checks) is measured per run, since that is the overhead fusion adds beyond the passes.
"""
from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from experts.fusion.combine import FusionParams, fuse_with_weights
from experts.fusion.fused import FusedModel
from experts.fusion.sampling import SamplingOptions, ban_repeated_ngrams, choose, penalise_repeats
from rag.local_llm import _cut, _settled, chat_inputs


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str  # "stop" (end of turn or stop string) or "length"

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


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


@dataclass
class _Row:
    prompt_tokens: int
    ids: list[int] = field(default_factory=list)
    done: str | None = None


class FusedDecoder:
    """Generate with one fusion rule over a FusedModel."""

    def __init__(self, model: FusedModel, params: FusionParams) -> None:
        self.model, self.params = model, params
        self.tokenizer = model.tokenizer
        self.last_stats = DecodeStats()

    def encode_chat(self, messages: list[dict[str, Any]]) -> list[int]:
        return chat_inputs(self.tokenizer, messages)["input_ids"][0].tolist()

    def encode_text(self, prompt: str) -> list[int]:
        return self.tokenizer(prompt)["input_ids"]

    def _batch(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        if not prompts or any(not p for p in prompts):
            raise ValueError("every prompt needs at least one token")
        too_big = [t for p in prompts for t in p if t >= self.model.vocab.size]
        if too_big:
            raise ValueError(f"prompt token {too_big[0]} is outside the fused vocabulary of "
                             f"{self.model.vocab.size} tokens ({self.model.vocab.describe()})")
        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        return ids, mask

    def generate(self, prompts: list[list[int]], options: SamplingOptions,
                 cancel: threading.Event | None = None) -> list[Generation]:
        """Complete token-id prompts (see encode_chat / encode_text); one Generation per prompt."""
        return self._run(prompts, options, cancel=cancel)

    def stream(self, prompts: list[list[int]], options: SamplingOptions, results: list[Generation] | None = None,
               cancel: threading.Event | None = None) -> Iterator[tuple[int, str]]:
        """(prompt index, text delta) pairs whose concatenation per prompt is exactly generate()'s text.

        The loop runs in a worker thread; text that could still become a stop string (or a partial
        UTF-8 character) is held back until settled. Closing the iterator cancels the worker.
        `results`, when given, receives the final Generations.
        """
        cancel = cancel or threading.Event()
        steps: queue.Queue = queue.Queue()
        outcome: dict[str, Any] = {}

        def work() -> None:
            try:
                outcome["results"] = self._run(prompts, options, on_step=steps.put, cancel=cancel)
            except BaseException as error:  # noqa: BLE001 - surfaced in the consuming thread
                outcome["error"] = error
            finally:
                steps.put(None)

        worker = threading.Thread(target=work, name="fused-decoder", daemon=True)
        worker.start()
        ids: list[list[int]] = [[] for _ in prompts]
        sent = [""] * len(prompts)
        try:
            while (step := steps.get()) is not None:
                for row, token in step:
                    ids[row].append(token)
                    text, cut = _cut(self.tokenizer.decode(ids[row], skip_special_tokens=True), options.stop)
                    safe = text if cut else _settled(text, options.stop)
                    if len(safe) > len(sent[row]) and safe.startswith(sent[row]):
                        yield row, safe[len(sent[row]):]
                        sent[row] = safe
            worker.join()
            if "error" in outcome:
                raise outcome["error"]
            for row, generation in enumerate(outcome["results"]):
                if len(generation.text) > len(sent[row]) and generation.text.startswith(sent[row]):
                    yield row, generation.text[len(sent[row]):]
            if results is not None:
                results.extend(outcome["results"])
        finally:
            cancel.set()

    def _run(self, prompts: list[list[int]], options: SamplingOptions,
             on_step: Callable[[list[tuple[int, int]]], None] | None = None,
             cancel: threading.Event | None = None) -> list[Generation]:
        """The decoding loop shared by generate() and stream(); on_step gets (row, token) pairs."""
        ids, mask = self._batch(prompts)
        anti = self.params.method == "proxy"
        rows = [_Row(len(p)) for p in prompts]
        stats = DecodeStats(rows=len(prompts))
        generator = torch.Generator().manual_seed(options.seed) if options.seed is not None else None
        weight_sums = None
        with self.model.lock, torch.inference_mode():
            started = time.perf_counter()
            logprobs, anti_lp, states = self.model.prefill(ids, mask, anti)
            stats.prefill_s = time.perf_counter() - started
            forward_before = self.model.forward_s
            seen = torch.zeros(len(prompts), self.model.vocab.size, dtype=torch.bool)
            if options.repetition_penalty != 1.0:
                seen.scatter_(1, ids.clamp_max(self.model.vocab.size - 1), mask.bool())
            for step in range(options.max_tokens):
                fused, weights = fuse_with_weights(logprobs, self.params, anti_lp)
                if weights is not None:
                    weight_sums = weights.sum(-1) if weight_sums is None else weight_sums + weights.sum(-1)
                scores = penalise_repeats(fused, seen, options.repetition_penalty)
                scores = ban_repeated_ngrams(scores, [r.ids for r in rows], options.no_repeat_ngram)
                tokens = choose(scores, options, generator)
                chosen = self._advance(rows, tokens.tolist(), options)
                seen[torch.arange(len(rows)), tokens] = True
                stats.steps, stats.tokens = step + 1, stats.tokens + len(chosen)
                if on_step is not None:
                    on_step(chosen)
                if all(r.done for r in rows) or (cancel is not None and cancel.is_set()):
                    break
                if step < options.max_tokens - 1:
                    logprobs, anti_lp = self.model.step(states, tokens, anti)
            decoding = time.perf_counter() - started - stats.prefill_s
            stats.forward_s = self.model.forward_s - forward_before
            stats.other_s = decoding - stats.forward_s
        if weight_sums is not None:
            stats.mean_weights = (weight_sums / max(1, stats.tokens)).tolist()
        self.last_stats = stats
        return [self._finish(row, options) for row in rows]

    def _advance(self, rows: list[_Row], tokens: list[int], options: SamplingOptions) -> list[tuple[int, int]]:
        """Append each unfinished row's token and mark rows that hit end-of-turn or a stop string."""
        chosen = []
        tail = max((len(stop) for stop in options.stop), default=0) + 8  # tokens enough to hold any stop string
        for index, (row, token) in enumerate(zip(rows, tokens)):
            if row.done:
                continue
            row.ids.append(token)
            chosen.append((index, token))
            if token in self.model.eos_ids:
                row.done = "stop"
            elif options.stop and _cut(self.tokenizer.decode(row.ids[-tail:], skip_special_tokens=True),
                                       options.stop)[1]:
                row.done = "stop"
            elif len(row.ids) >= options.max_tokens:
                row.done = "length"
        return chosen

    def _finish(self, row: _Row, options: SamplingOptions) -> Generation:
        text, _ = _cut(self.tokenizer.decode(row.ids, skip_special_tokens=True), options.stop)
        return Generation(text, row.ids, row.prompt_tokens, row.done or "length")
