"""The one token loop behind every local generation, and its streaming form.

A `Stepper` hands out next-token scores: after a prompt (`start`) and after each chosen token
(`advance`). A plain model, a model with a LoRA adapter and a fusion of several models are all
steppers, so stop strings, the n-gram ban, sampling, cancellation and streaming are written once
and a streamed answer is exactly the whole answer.
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from rag.runtime.sampling import SamplingOptions, ban_repeated_ngrams, choose, penalise_repeats
from rag.runtime.text import cut_at_stop, settled


class GenerationTimeout(TimeoutError):
    """Generation passed its deadline; raised so a local model times out like a hosted one."""


class Stepper(Protocol):
    """Next-token scores [V] (logits or log-probs) for one sequence."""

    vocab_size: int

    def start(self, prompt: list[int]) -> torch.Tensor: ...

    def advance(self, token: int) -> torch.Tensor: ...


class Detokenizer(Protocol):
    eos_ids: frozenset[int]

    def detokenize(self, ids: list[int]) -> str: ...


@dataclass
class Decoded:
    """One finished sequence, with the counts OpenAI-style usage reports."""

    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str  # "stop" (end of turn or a stop string) or "length" (max_tokens reached)
    drafted: int = 0  # speculative decoding: tokens a draft model proposed, and how many the model accepted
    accepted: int = 0

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


OnToken = Callable[[int], None]


def decode(stepper: Stepper, text: Detokenizer, prompt: list[int], options: SamplingOptions,
           on_token: OnToken | None = None, cancel: threading.Event | None = None) -> Decoded:
    """Generate one sequence. Stops at end of turn, a stop string, max_tokens, or `cancel`."""
    if not prompt:
        raise ValueError("a prompt needs at least one token")
    generator = torch.Generator().manual_seed(options.seed) if options.seed is not None else None
    seen = None
    if options.repetition_penalty != 1.0:
        seen = torch.zeros(1, stepper.vocab_size, dtype=torch.bool)
        seen[0, [t for t in prompt if t < stepper.vocab_size]] = True
    tail = max((len(stop) for stop in options.stop), default=0) + 8  # tokens enough to hold any stop string
    ids: list[int] = []
    reason = "length"
    scores = stepper.start(prompt)
    for _ in range(options.max_tokens):
        row = scores.reshape(1, -1).float()
        if seen is not None:
            row = penalise_repeats(row, seen, options.repetition_penalty)
        row = ban_repeated_ngrams(row.clone(), [ids], options.no_repeat_ngram)
        token = int(choose(row, options, generator)[0])
        ids.append(token)
        if seen is not None:
            seen[0, token] = True
        if on_token is not None:
            on_token(token)
        if token in text.eos_ids:
            reason = "stop"
            break
        if options.stop and cut_at_stop(text.detokenize(ids[-tail:]), options.stop)[1]:
            reason = "stop"
            break
        if (cancel is not None and cancel.is_set()) or len(ids) >= options.max_tokens:
            break
        scores = stepper.advance(token)
    final, _ = cut_at_stop(text.detokenize(ids), options.stop)
    return Decoded(final, ids, len(prompt), reason)


def stream_rows(run: Callable[[Callable[[int, int], None], threading.Event], list[Decoded]], text: Detokenizer,
                stops: list[str], rows: int, results: list[Decoded] | None = None,
                cancel: threading.Event | None = None) -> Iterator[tuple[int, str]]:
    """(row, text delta) pairs whose concatenation per row is exactly the whole run's text.

    `run(on_step, cancel)` decodes in a worker thread, calling on_step(row, token) per token. Text
    that could still become a stop string, or that ends in a partial UTF-8 character, is held back
    until settled. Closing the iterator cancels the worker after its current token.
    """
    cancel = cancel or threading.Event()
    steps: queue.Queue[tuple[int, int] | None] = queue.Queue()
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["results"] = run(lambda row, token: steps.put((row, token)), cancel)
        except BaseException as error:  # noqa: BLE001 - surfaced in the consuming thread
            outcome["error"] = error
        finally:
            steps.put(None)

    worker = threading.Thread(target=work, name="local-decode", daemon=True)
    worker.start()
    ids: list[list[int]] = [[] for _ in range(rows)]
    sent = [""] * rows
    try:
        while (step := steps.get()) is not None:
            row, token = step
            ids[row].append(token)
            whole, cut = cut_at_stop(text.detokenize(ids[row]), stops)
            safe = whole if cut else settled(whole, stops)
            if len(safe) > len(sent[row]) and safe.startswith(sent[row]):
                yield row, safe[len(sent[row]):]
                sent[row] = safe
        worker.join()
        if "error" in outcome:
            raise outcome["error"]
        for row, done in enumerate(outcome["results"]):
            if len(done.text) > len(sent[row]) and done.text.startswith(sent[row]):
                yield row, done.text[len(sent[row]):]
        if results is not None:
            results.extend(outcome["results"])
    finally:
        cancel.set()


class Deadline:
    """Cancels a generation when its time is up, and remembers that it did."""

    def __init__(self, cancel: threading.Event, timeout: float | None) -> None:
        self.cancel, self.expired = cancel, False
        self._timer = threading.Timer(timeout, self._expire) if timeout else None
        if self._timer is not None:
            self._timer.daemon = True
            self._timer.start()

    def _expire(self) -> None:
        self.expired = True
        self.cancel.set()

    def close(self, what: str, timeout: float | None) -> None:
        """Stop the timer; raise GenerationTimeout if it fired."""
        if self._timer is not None:
            self._timer.cancel()
        if self.expired:
            raise GenerationTimeout(f"local model {what} did not finish within {timeout:g}s")
