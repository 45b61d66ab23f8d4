"""Registered GGUF models as transformers folders, for the jobs where transformers is the right tool.

Generation runs on llama.cpp (`rag.runtime.llama`); LoRA training and teacher-forced scoring of
cards use transformers, which needs float weights. transformers can read GGUF, but dequantising
costs tens of seconds, so each model is converted once into a safetensors folder under
`$MIGHTY_MODEL_CACHE` (default `$MIGHTY_HOME/models`); every later load reads that folder. The folder is written aside and renamed into place, so a crash or a
concurrent process never leaves a half-written copy that a later load would trust.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch

from indexes.config import model_cache_dir
from rag.runtime.registry import LOCAL_MODELS, LocalModelSpec

_CACHE_FORMAT = 1  # bump to invalidate converted folders written by an older conversion


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
