"""Several local models in one process: a small LRU of loaded models keyed by model and adapter.

A model's weights are memory-mapped by llama.cpp, so the base and the base with a card's LoRA share
their file pages; what each entry really costs is its KV cache and compute buffers. Entries are
evicted least-recently-used beyond `MIGHTY_LOCAL_MODELS_KEPT` (default 6).
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

from rag.runtime.model import LocalModel
from rag.runtime.registry import DEFAULT_LOCAL_MODEL, resolve_model

_MODELS: OrderedDict[tuple[str, str, float], LocalModel] = OrderedDict()
_LOCK = threading.Lock()


def _kept() -> int:
    return max(1, int(os.environ.get("MIGHTY_LOCAL_MODELS_KEPT", "6")))


def load_model(name: str, adapter: Path | None = None, adapter_scale: float = 1.0, allow_paths: bool = True,
               threads: int | None = None, batch_invariant: bool = False) -> LocalModel:
    """A fresh model instance (not cached): a GGUF on llama.cpp, or a Hugging Face folder on transformers.

    `adapter` is a peft LoRA folder; it is converted to a GGUF LoRA once and applied at run time.
    `batch_invariant` (llama.cpp only) makes logits independent of batch shape, which speculative
    decoding needs (see `LlamaModel`).
    """
    from rag.runtime.registry import LocalModelError

    resolved = resolve_model(name, allow_paths)
    if resolved.kind == "hf":
        if adapter is not None:
            raise LocalModelError(f"{name}: LoRA adapters on a Hugging Face folder are loaded through "
                                  "experts.models (transformers), not the llama.cpp runtime")
        from rag.runtime.hf import TransformersModel

        if batch_invariant:
            raise LocalModelError(f"{name}: speculative decoding needs a GGUF model on llama.cpp, not a Hugging Face folder")
        return TransformersModel(name, resolved.path, threads)
    from rag.runtime.llama import LlamaModel
    from rag.runtime.lora import gguf_adapter

    lora = gguf_adapter(adapter, resolved.path) if adapter is not None else None
    return LlamaModel(name, resolved.path, lora, adapter_scale, threads, batch_invariant=batch_invariant)


def get_model(name: str = DEFAULT_LOCAL_MODEL, adapter: Path | None = None, adapter_scale: float = 1.0,
              allow_paths: bool = True) -> LocalModel:
    """The process-wide instance of a model (with an adapter), loaded on first use."""
    key = (name, str(Path(adapter).resolve()) if adapter is not None else "", adapter_scale)
    with _LOCK:
        if key in _MODELS:
            _MODELS.move_to_end(key)
            return _MODELS[key]
    model = load_model(name, adapter, adapter_scale, allow_paths)  # outside the lock: loads take seconds
    with _LOCK:
        model = _MODELS.setdefault(key, model)
        _MODELS.move_to_end(key)
        while len(_MODELS) > _kept():
            _MODELS.popitem(last=False)
        return model
