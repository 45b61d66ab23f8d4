"""A GGUF model on llama.cpp (llama-cpp-python): quantised weights, a KV cache, full next-token logits.

Why llama-cpp-python: it is maintained, it exposes llama.cpp's raw logits for every position we ask
for (fusion needs the whole distribution at each step, which `xllamacpp`'s top-n API cannot give),
and it runs 4-bit GGUF on this CPU about 5x faster than transformers in float32 (SmolLM2-135M: 94
vs 18 tokens/s). It builds from source here (no wheel for this platform): the first set-up takes
about 4 minutes longer, later installs reuse pip's cached wheel.

Each `LlamaModel` owns one llama.cpp context (one sequence, its own KV cache); weights are
memory-mapped, so several instances of one GGUF (say the base and the base with a card's LoRA)
share the file's pages. A LoRA adapter is applied at run time (`llama_set_adapters_lora`), unmerged.
Sampling is ours (`rag.runtime.decode`), not llama.cpp's, so plain, LoRA and fused generation pick
tokens by the same rules.
"""
from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rag.runtime.model import LocalModel
from rag.runtime.registry import LocalModelError
from rag.runtime.text import message_text

DEFAULT_CONTEXT = 4096


def default_threads() -> int:
    """The cores this process may use. On a machine shared by several busy processes, 1 thread per
    process can beat 2 (no waiting on a descheduled sibling thread); set MIGHTY_LLM_THREADS then."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def threads_for(name: str, explicit: int | None = None) -> int:
    """Threads for one model: the argument, else MIGHTY_LLM_THREADS (`2`, or per model:
    `qwen2.5-coder-0.5b-instruct=1,default=2`), else the available cores."""
    if explicit:
        return explicit
    setting = os.environ.get("MIGHTY_LLM_THREADS", "").strip()
    if not setting:
        return default_threads()
    if "=" not in setting:
        return max(1, int(setting))
    table = dict(item.split("=", 1) for item in setting.split(",") if "=" in item)
    chosen = table.get(name, table.get("default"))
    return max(1, int(chosen)) if chosen else default_threads()


_LOADING = threading.Lock()


@contextmanager
def _load_settings(batch_invariant: bool) -> Iterator[None]:
    """Load a model whose logits do not depend on how many tokens share a batch, when asked to.

    Speculative decoding verifies several tokens in one batch and must match one-token steps bit for
    bit. llama.cpp's CPU backend breaks that twice (measured here): attention over the F16 KV cache
    without flash attention rounds a batch of 2+ differently from a batch of 1 (SmolLM2: logits up to
    0.73 apart, an argmax flip within 24 tokens), and weights repacked for the CPU (Q4_K in the Qwen
    models) go through a matrix-matrix kernel for batches and a matrix-vector one for single tokens
    (Qwen 1.5B: 0.56 apart); and flash attention for a single token splits a cache of more than 256
    tokens across threads, summing in another order than a batch does (SmolLM2: 0.96 apart). Flash
    attention (a `Llama` argument), no repacking (llama.cpp's `--no-repack`, the model parameter
    `use_extra_bufts`, which llama-cpp-python does not expose, so its defaults are adjusted while this
    model loads) and one thread for one-token evaluations (`n_threads`; batches keep every thread)
    give identical logits. A speculative target evaluates batches almost only, so the single thread
    costs it little. Loads are serialised so the adjusted defaults reach only the model that asked.
    """
    import llama_cpp.llama as high_level

    with _LOADING:
        if not batch_invariant:
            yield
            return
        low_level = high_level.llama_cpp
        defaults = low_level.llama_model_default_params

        def without_repacking():
            params = defaults()
            params.use_extra_bufts = False
            return params

        low_level.llama_model_default_params = without_repacking
        try:
            yield
        finally:
            low_level.llama_model_default_params = defaults


class LlamaModel(LocalModel):
    """One GGUF model (optionally with a LoRA adapter) and its single-sequence KV cache.

    Not thread-safe by itself: callers hold `lock` for a whole generation, since the KV cache is
    the state of that generation. `prefill` reuses the longest cached prefix of the previous
    sequence, so a fixed system prompt is evaluated once, not per request.
    """

    backend = "llama.cpp"

    def __init__(self, name: str, path: Path, adapter: Path | None = None, adapter_scale: float = 1.0,
                 threads: int | None = None, n_ctx: int = DEFAULT_CONTEXT, n_batch: int = 512,
                 batch_invariant: bool = False) -> None:
        try:
            import llama_cpp
        except ImportError as error:
            raise LocalModelError("llama-cpp-python is not installed; run `bash scripts/setup.sh` (it builds "
                                  "llama.cpp once, about 4 minutes) or: pip install llama-cpp-python==0.3.36") from error
        self.name, self.path, self.adapter = name, Path(path), adapter
        self.threads = threads_for(name, threads)
        self.lock = threading.RLock()
        self.batch_invariant = batch_invariant
        extra = {"flash_attn": True} if batch_invariant else {}
        try:
            with _load_settings(batch_invariant):
                self._llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_batch,
                                            n_threads=self._step_threads(),
                                            n_threads_batch=self.threads, verbose=False, logits_all=False, **extra)
        except (ValueError, RuntimeError) as error:
            raise LocalModelError(f"llama.cpp cannot load {path}: {error}") from error
        self._lib = llama_cpp
        self.n_ctx = self._llm.n_ctx()
        self.vocab_size = self._llm.n_vocab()
        self._lora = None
        if adapter is not None:
            self._apply_lora(adapter, adapter_scale)
        vocab = llama_cpp.llama_model_get_vocab(self._llm._model.model)
        self.eos_ids = frozenset(t for t in range(self.vocab_size) if llama_cpp.llama_vocab_is_eog(vocab, t))
        self._template = self._chat_template()
        self._cached: list[int] = []  # the tokens whose K/V the context holds

    def _apply_lora(self, adapter: Path, scale: float) -> None:
        lib = self._lib
        lora = lib.llama_adapter_lora_init(self._llm._model.model, str(adapter).encode())
        if not lora:
            raise LocalModelError(f"llama.cpp cannot load the LoRA adapter {adapter} on {self.name}")
        self._llm._stack.callback(lambda: lib.llama_adapter_lora_free(lora))
        adapters = (lib.llama_adapter_lora_p_ctypes * 1)(lora)
        scales = (ctypes.c_float * 1)(scale)
        if lib.llama_set_adapters_lora(self._llm._ctx.ctx, adapters, 1, scales):
            raise LocalModelError(f"llama.cpp cannot apply the LoRA adapter {adapter} on {self.name}")
        self._lora = lora

    # text <-> tokens -------------------------------------------------------------------------

    def tokenize(self, text: str, special: bool = True, add_bos: bool = False) -> list[int]:
        return self._llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)

    def encode(self, text: str) -> list[int]:
        return self.tokenize(text, special=False, add_bos=bool(self._llm._model.add_bos_token()))

    def detokenize(self, ids: list[int]) -> str:
        """Text of generated ids, control tokens (end of turn) left out; a partial character shows as U+FFFD."""
        return self._llm.detokenize(list(ids)).decode("utf-8", errors="replace")

    def _chat_template(self) -> Any:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = self._llm.metadata.get("tokenizer.chat_template")
        if not template:
            return None
        model = self._llm._model
        eos, bos = self._llm.token_eos(), self._llm.token_bos()
        return Jinja2ChatFormatter(template, model.token_get_text(eos) if eos >= 0 else "",
                                   model.token_get_text(bos) if bos >= 0 else "")

    def chat_text(self, messages: list[dict[str, Any]]) -> str:
        """The prompt text for a chat, by the model's own template ('role: text' lines without one)."""
        chat = [{"role": m.get("role", "user"), "content": message_text(m.get("content"))} for m in messages]
        if self._template is None:
            return "".join(f"{m['role']}: {m['content']}\n" for m in chat) + "assistant: "
        return self._template(messages=chat).prompt

    def chat_tokens(self, messages: list[dict[str, Any]]) -> list[int]:
        add_bos = self._template is not None and self._needs_bos()
        return self.tokenize(self.chat_text(messages), special=True, add_bos=add_bos)

    def _needs_bos(self) -> bool:
        bos = self._llm.token_bos()
        return bos >= 0 and bool(self._llm._model.add_bos_token()) and \
            not self.chat_text([{"role": "user", "content": ""}]).startswith(self._llm._model.token_get_text(bos))

    # evaluation ------------------------------------------------------------------------------

    def _decode(self, tokens: list[int], all_logits: bool) -> np.ndarray:
        """Append tokens to the KV cache; logits of the last token [V], or of every token [L, V]."""
        if len(self._cached) + len(tokens) > self.n_ctx:
            raise LocalModelError(f"{len(self._cached) + len(tokens)} tokens do not fit {self.name}'s context of "
                                  f"{self.n_ctx}; shorten the prompt or max_tokens")
        llm, rows = self._llm, []
        for start in range(0, len(tokens), llm.n_batch):
            batch = tokens[start:start + llm.n_batch]
            llm._batch.set_batch(batch=batch, n_past=len(self._cached), logits_all=all_logits)
            llm._ctx.decode(llm._batch)
            self._cached.extend(batch)
            count = len(batch) if all_logits else 1
            pointer = llm._ctx.get_logits() if all_logits else llm._ctx.get_logits_ith(-1)
            rows.append(np.ctypeslib.as_array(pointer, shape=(count * self.vocab_size,))
                        .reshape(count, self.vocab_size).copy())
        llm.n_tokens = len(self._cached)
        return np.concatenate(rows) if all_logits else rows[-1][0]

    def _truncate(self, keep: int) -> None:
        self._llm._ctx.kv_cache_seq_rm(-1, keep, -1)
        del self._cached[keep:]

    def prefill(self, tokens: list[int]) -> torch.Tensor:
        """Logits [V] after `tokens`, reusing the longest prefix already in the KV cache."""
        if not tokens:
            raise ValueError("a prompt needs at least one token")
        self._truncate(min(self.cached_prefix(tokens), len(tokens) - 1))  # the last token is always evaluated: its logits
        return torch.from_numpy(self._decode(tokens[len(self._cached):], all_logits=False))

    def step(self, token: int) -> torch.Tensor:
        """Logits [V] after appending one token."""
        return torch.from_numpy(self._decode([token], all_logits=False))

    def cached_prefix(self, tokens: list[int]) -> int:
        common = 0
        for a, b in zip(self._cached, tokens):
            if a != b:
                break
            common += 1
        return common

    def score(self, tokens: list[int]) -> torch.Tensor:
        """Teacher-forced logits [L, V] at every position of `tokens` (the KV cache is rebuilt)."""
        self._truncate(0)
        return torch.from_numpy(self._decode(tokens, all_logits=True))

    def append(self, tokens: list[int]) -> torch.Tensor:
        """Logits [L, V] after each of `tokens`, appended to the KV cache in one forward pass."""
        return torch.from_numpy(self._decode(tokens, all_logits=True))

    def rewind(self, keep: int) -> None:
        """Keep only the first `keep` cached tokens (a speculative draft's rejected tail is dropped)."""
        self._truncate(min(keep, len(self._cached)))

    @property
    def cached_tokens(self) -> int:
        return len(self._cached)

    def vocabulary(self) -> list[bytes]:
        """Every token's text, by id: two models can share token ids only if these agree."""
        model = self._llm._model.model
        vocab = self._lib.llama_model_get_vocab(model)
        return [self._lib.llama_vocab_get_text(vocab, t) or b"" for t in range(self.vocab_size)]

    def _step_threads(self) -> int:
        """Threads for one-token evaluations; 1 when batch-invariant (see `_load_settings`)."""
        return 1 if self.batch_invariant else self.threads

    def set_threads(self, threads: int) -> None:
        super().set_threads(threads)
        self._llm._ctx.set_n_threads(self._step_threads(), self.threads)

    def reset(self) -> None:
        """Forget the KV cache (the next prefill evaluates its whole prompt)."""
        self._truncate(0)
