"""Loading causal LMs for cards: a base (registered local name, folder or Hugging Face id) plus a LoRA.

For generation (`runtime_model`) a GGUF base runs on the llama.cpp runtime with the card's LoRA applied
at run time; a Hugging Face folder or id has no GGUF, so it runs on transformers behind the same
interface. For training and teacher-forced scoring (`load_base`, `load_adapter`), registered GGUF
models are converted once to safetensors by `rag.runtime.convert`; anything else goes to
transformers as is, so any Hugging Face id or local folder works where a user has it. Weights are loaded with safetensors only: `use_safetensors=True` makes
transformers refuse pickle checkpoints instead of unpickling them.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rag.runtime import LocalModel, get_model
from rag.runtime.convert import resolve_source
from rag.runtime.registry import HUB_IDS, LOCAL_MODELS, LocalModelError, resolve_model

# Hugging Face ids that name a model Mighty ships locally: used when the hub cannot be reached.
HUB_ALIASES = dict(HUB_IDS)


class ModelLoadError(RuntimeError):
    """A base model or adapter cannot be loaded; the message says which and what to fix."""


@dataclass
class LoadedModel:
    model: Any  # a transformers PreTrainedModel (or peft PeftModel)
    tokenizer: Any
    source: str  # what from_pretrained read


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def resolve_base(base: str) -> tuple[str, bool]:
    """(from_pretrained argument, local_files_only) for a base reference."""
    name = HUB_ALIASES.get(base, base)
    if name in LOCAL_MODELS and not (base in HUB_ALIASES and not _offline() and _in_hub_cache(base)):
        source, _ = resolve_source(name)
        return source, True
    path = Path(base).expanduser()
    if path.is_dir():
        return str(path), True
    return base, _offline()


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # noqa: BLE001 - any failure just means "use the shipped copy"
        return False


def load_tokenizer(base: str) -> Any:
    from transformers import AutoTokenizer

    source, local_only = resolve_base(base)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
    except (OSError, ValueError, LocalModelError) as error:
        raise ModelLoadError(_explain(base, error)) from error
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


_BASES: dict[str, Any] = {}
_BASES_LOCK = threading.Lock()


def load_base(base: str, dtype: torch.dtype = torch.float32, fresh: bool = False) -> LoadedModel:
    """A frozen base model in eval mode. Shared per process unless `fresh` (training needs its own copy)."""
    from transformers import AutoModelForCausalLM

    with _BASES_LOCK:
        key = f"{base}|{dtype}"
        if not fresh and key in _BASES:
            return _BASES[key]
        source, local_only = resolve_base(base)
        try:
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, local_files_only=local_only,
                                                         use_safetensors=True)
        except (OSError, ValueError, LocalModelError) as error:
            raise ModelLoadError(_explain(base, error)) from error
        model.eval()
        loaded = LoadedModel(model, load_tokenizer(base), source)
        if not fresh:
            _BASES[key] = loaded
        return loaded


def load_adapter(base: str, adapter_dir: Path, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """A fresh base with a LoRA adapter applied (weights merged: decoding then costs what the base costs)."""
    from peft import PeftModel

    loaded = load_base(base, dtype, fresh=True)
    if not (adapter_dir / "adapter_model.safetensors").is_file():
        raise ModelLoadError(f"{adapter_dir}: no adapter_model.safetensors; a card adapter is a peft LoRA folder "
                             "saved with safe_serialization=True")
    try:
        model = PeftModel.from_pretrained(loaded.model, str(adapter_dir), is_trainable=False)
        model = model.merge_and_unload()
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        raise ModelLoadError(f"adapter {adapter_dir} does not load on base {base!r}: {error}") from error
    model.eval()
    return LoadedModel(model, loaded.tokenizer, loaded.source)


_HF_RUNTIMES: dict[tuple[str, str], LocalModel] = {}
_HF_LOCK = threading.Lock()


def runtime_model(base: str, adapter: Path | None = None, full: Path | None = None) -> LocalModel:
    """A model to generate with: a full card's folder, or a base with an optional LoRA card.

    GGUF bases (registered or operator-configured) run on llama.cpp, the LoRA converted to a GGUF
    adapter once; a base that is a Hugging Face folder or cached id runs on transformers, with the
    LoRA merged in (kept per process, as each is a full copy of its base)."""
    if full is not None:
        return get_model(str(full))
    try:
        resolved = resolve_model(base)
    except LocalModelError:
        resolved = None
    if resolved is not None and resolved.kind == "gguf":
        return get_model(base, adapter=adapter)
    from rag.runtime.hf import TransformersModel

    key = (base, str(adapter or ""))
    with _HF_LOCK:
        if key not in _HF_RUNTIMES:
            loaded = load_adapter(base, adapter) if adapter is not None else load_base(base)
            _HF_RUNTIMES[key] = TransformersModel(base, Path(loaded.source), model=loaded.model,
                                                  tokenizer=loaded.tokenizer)
        return _HF_RUNTIMES[key]


def load_full(model_dir: Path, dtype: torch.dtype = torch.float32) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype, local_files_only=True,
                                                     use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"model folder {model_dir} does not load: {error}") from error
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return LoadedModel(model, tokenizer, str(model_dir))


def _explain(base: str, error: Exception) -> str:
    known = ", ".join(sorted(LOCAL_MODELS))
    hint = " (HF_HUB_OFFLINE is set, so only cached or local models load)" if _offline() else ""
    return (f"base model {base!r} cannot be loaded{hint}: use a registered local name ({known}), a local "
            f"folder with a safetensors model, or a Hugging Face id you have: {error}")
