"""The one interface every local model offers, whichever engine runs it.

`LocalModel` is what Mighty's writers use: the LiteLLM `local/` provider, card knowledge and fused
decoding. An engine implements tokenisation and three evaluation calls (`prefill`, `step`,
`score`); generation and streaming are written once here on top of them, through
`rag.runtime.decode`. Engines: `LlamaModel` (GGUF on llama.cpp, the default for everything that
writes) and `TransformersModel` (a Hugging Face folder, e.g. a full-model card, where no GGUF exists).
"""
from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from rag.runtime.decode import Deadline, Decoded, OnToken, decode, stream_rows
from rag.runtime.sampling import SamplingOptions

Prompt = list[int] | list[dict[str, Any]]  # token ids, or chat messages to format with the model's template


@dataclass
class NextToken:
    """The next-token distribution after a prompt, and what reading the prompt cost."""

    logits: torch.Tensor  # [V]
    prompt_tokens: int
    cached_tokens: int  # of prompt_tokens, how many came from the KV cache instead of a forward pass


class LocalModel(ABC):
    """A causal LM in this process: tokens in, full next-token logits out, plus generation on top."""

    name: str
    backend: str
    threads: int
    vocab_size: int
    eos_ids: frozenset[int]
    lock: threading.RLock  # held for a whole generation: the KV cache is that generation's state

    @abstractmethod
    def tokenize(self, text: str, special: bool = True, add_bos: bool = False) -> list[int]: ...

    @abstractmethod
    def detokenize(self, ids: list[int]) -> str: ...

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Plain text as a prompt, with the model's usual start-of-text token if it has one."""

    @abstractmethod
    def chat_tokens(self, messages: list[dict[str, Any]]) -> list[int]: ...

    @abstractmethod
    def prefill(self, tokens: list[int]) -> torch.Tensor:
        """Next-token logits [V] after a prompt (replacing the sequence in the KV cache)."""

    @abstractmethod
    def step(self, token: int) -> torch.Tensor:
        """Next-token logits [V] after appending one token."""

    @abstractmethod
    def score(self, tokens: list[int]) -> torch.Tensor:
        """Teacher-forced logits [L, V] at every position."""

    @abstractmethod
    def reset(self) -> None: ...

    def cached_prefix(self, tokens: list[int]) -> int:
        """How many leading `tokens` the KV cache already holds (0 for an engine that keeps none)."""
        return 0

    def set_threads(self, threads: int) -> None:
        """Cores for the next evaluations (fusion splits the cores between models it runs side by side)."""
        self.threads = max(1, threads)

    # the Stepper protocol of rag.runtime.decode
    def start(self, prompt: list[int]) -> torch.Tensor:
        return self.prefill(prompt)

    def advance(self, token: int) -> torch.Tensor:
        return self.step(token)

    def tokens(self, prompt: Prompt) -> list[int]:
        if prompt and isinstance(prompt[0], dict):
            return self.chat_tokens(prompt)  # type: ignore[arg-type]
        return list(prompt)  # type: ignore[arg-type]

    def next_token(self, prompt: Prompt, timeout: float | None = None) -> NextToken:
        """The logits after `prompt` from one forward pass, nothing sampled: what a judge reads a
        calibrated verdict from (e.g. P("yes") against P("no")). The KV cache's longest matching prefix
        is reused, so a prompt that continues the previous generation pays only for its new tokens.
        `timeout` bounds the wait for the model (another generation may hold it); TimeoutError after."""
        tokens = self.tokens(prompt)
        if not self.lock.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
            raise TimeoutError(f"model {self.name!r} stayed busy for {timeout:g}s")
        try:
            cached = min(self.cached_prefix(tokens), len(tokens) - 1)
            return NextToken(self.prefill(tokens), len(tokens), cached)
        finally:
            self.lock.release()

    def run(self, tokens: list[int], options: SamplingOptions, on_token: OnToken | None = None,
            cancel: threading.Event | None = None) -> Decoded:
        """One generation stepping this model (the caller holds `lock`); a speculative pair steps
        through its draft-and-verify stepper instead, with the same stopping and streaming."""
        return decode(self, self, tokens, options, on_token, cancel)

    def generate(self, prompt: Prompt, options: SamplingOptions, cancel: threading.Event | None = None,
                 timeout: float | None = None) -> Decoded:
        """Complete a prompt; greedy when options.temperature is 0. `timeout` (seconds) includes waiting
        for the model; when it passes, GenerationTimeout is raised."""
        cancel = cancel or threading.Event()
        deadline = Deadline(cancel, timeout)
        try:
            tokens = self.tokens(prompt)
            with self.lock:
                return self.run(tokens, options, cancel=cancel)
        finally:
            deadline.close(repr(self.name), timeout)

    def stream(self, prompt: Prompt, options: SamplingOptions, cancel: threading.Event | None = None,
               timeout: float | None = None, results: list[Decoded] | None = None) -> Iterator[str]:
        """Text deltas whose concatenation is exactly generate()'s text; `results` receives the Decoded."""
        cancel = cancel or threading.Event()
        deadline = Deadline(cancel, timeout)
        tokens = self.tokens(prompt)

        def run(on_step, stop_event: threading.Event) -> list[Decoded]:
            with self.lock:
                return [self.run(tokens, options, lambda token: on_step(0, token), stop_event)]

        try:
            for _, delta in stream_rows(run, self, options.stop, 1, results, cancel):
                yield delta
        finally:
            deadline.close(repr(self.name), timeout)
