"""The load phase of card validation: does the card really run on its declared base?

Separate from the static checks because it imports torch and transformers and takes seconds. It
loads the weights the way serving will (`experts.models`), so a card that passes here also loads
there. Errors name the file or manifest field and say what to fix.
"""
from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import torch

from experts.errors import CardValidationError
from experts.manifest import CardManifest
from experts.models import ModelLoadError, load_adapter, load_full, load_tokenizer, resolve_base
from experts.validation import TOKENIZER_FILES, safetensors_header

PROBE_PROMPT = "The most important fact about this topic is"
PROBE_TOKENS = 4
# Largest total-variation distance allowed between the runtime's (llama.cpp, quantised activations)
# and transformers' next-token distributions of an adapter card on the probe prompt; a LoRA converted
# with wrong tensor names or layouts moves them far apart.
RUNTIME_TOLERANCE = 0.25


def run_load_checks(folder: Path, manifest: CardManifest, artifact: Path) -> tuple[str, int]:
    """(generated sample, vocabulary size) when the card loads and generates; raises otherwise."""
    base = manifest.model.base
    vocab_size = _base_vocab_size(base)
    rel = _relative(folder, artifact)
    if manifest.model.adapter is not None:
        weights = artifact / "adapter_model.safetensors"
        _check_adapter_rows(safetensors_header(weights, rel + "adapter_model.safetensors"),
                            vocab_size, rel + "adapter_model.safetensors", base)
        _check_shipped_tokenizer(folder, artifact, base)
        try:
            loaded = load_adapter(base, artifact)
        except ModelLoadError as error:
            raise CardValidationError(f"model.adapter: {manifest.model.adapter!r} does not load on base {base!r} "
                                      f"({_gist(error.__cause__ or error)}); retrain the adapter on the declared "
                                      "base or fix model.base") from None
        _check_adapter_modules(weights, rel + "adapter_model.safetensors", loaded.model, base)
    else:
        try:
            loaded = load_full(artifact)
        except ModelLoadError as error:
            raise CardValidationError(f"model.full: {manifest.model.full!r} does not load "
                                      f"({_gist(error.__cause__ or error)}); save it again with save_pretrained "
                                      "(safetensors, with its tokenizer)") from None
        own = getattr(loaded.model.config, "vocab_size", None)
        if own != vocab_size:
            raise CardValidationError(f"{rel}config.json: vocab_size {own} differs from base {base!r} "
                                      f"({vocab_size}); a card must share its base's vocabulary")
        _check_shipped_tokenizer(folder, artifact, base)
    weights_name = rel + "adapter_model.safetensors" if manifest.model.adapter is not None else rel or "model"
    try:
        _check_rows(loaded.model, vocab_size, base)
        sample = _generate(loaded.model, loaded.tokenizer, weights_name)
        if manifest.model.adapter is not None:
            _check_runtime(base, artifact, loaded.model, weights_name)
        return sample, vocab_size
    finally:
        del loaded
        gc.collect()


def _relative(folder: Path, artifact: Path) -> str:
    rel = artifact.relative_to(folder.resolve()).as_posix()
    return "" if rel == "." else rel + "/"


def _base_vocab_size(base: str) -> int:
    from transformers import AutoConfig

    source, local_only = resolve_base(base)
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=local_only)
    except Exception as error:  # noqa: BLE001 - any loader failure means the base is unusable here
        raise CardValidationError(f"model.base: {base!r} cannot be loaded ({_gist(error)}); use a registered local "
                                  "name such as smollm2-135m-instruct, a local model folder, or a cached "
                                  "Hugging Face id") from None
    size = getattr(config, "vocab_size", None) or getattr(config.get_text_config(), "vocab_size", None)
    if not size:
        raise CardValidationError(f"model.base: {base!r} declares no vocab_size; use a causal language model")
    return int(size)


def _check_adapter_rows(header: dict[str, Any], vocab_size: int, name: str, base: str) -> None:
    """Adapters that carry embedding or output layers must keep the base's row count."""
    for key, info in header.items():
        if key == "__metadata__":
            continue
        shape = info["shape"]
        rows = None
        if key.endswith(("embed_tokens.weight", "lm_head.weight")) and shape:
            rows = shape[0]
        elif ".lora_embedding_A" in key and len(shape) == 2:
            rows = shape[1]
        if rows is not None and rows != vocab_size:
            raise CardValidationError(f"{name}: tensor {key!r} has {rows} vocabulary rows but base {base!r} has "
                                      f"{vocab_size}; train the adapter without resizing the vocabulary")


def _check_shipped_tokenizer(folder: Path, artifact: Path, base: str) -> None:
    from transformers import AutoTokenizer

    for place in dict.fromkeys((folder, artifact)):
        if not any((place / name).is_file() for name in TOKENIZER_FILES):
            continue
        where = _relative(folder, place.resolve()) or "./"
        try:
            own = AutoTokenizer.from_pretrained(str(place), local_files_only=True).get_vocab()
        except Exception as error:  # noqa: BLE001 - a tokenizer that does not load is a card error
            raise CardValidationError(f"{where}: the tokenizer files do not load ({error}); ship the base's "
                                      "tokenizer unchanged or none at all") from None
        expected = load_tokenizer(base).get_vocab()
        if own != expected:
            extra = sorted(set(own.items()) - set(expected.items()))[:3]
            missing = sorted(set(expected.items()) - set(own.items()))[:3]
            raise CardValidationError(
                f"{where}: tokenizer vocabulary differs from base {base!r} ({len(own)} vs {len(expected)} "
                f"tokens; only in card: {extra}, only in base: {missing}); a card must use its base's "
                "tokenizer unchanged (delete the tokenizer files to use the base's)")


def _check_adapter_modules(weights: Path, name: str, model: Any, base: str) -> None:
    """peft ignores tensors for modules the base lacks; here they mean the adapter is for another model."""
    modules = {module_name for module_name, _ in model.named_modules()}
    for key in safetensors_header(weights, name):
        if key == "__metadata__":
            continue
        parts = key.removeprefix("base_model.model.").split(".")
        cut = next((i for i, part in enumerate(parts) if part.startswith("lora_") or part in ("weight", "bias")),
                   len(parts))
        module = ".".join(parts[:cut])
        if module not in modules:
            raise CardValidationError(f"{name}: tensor {key!r} targets module {module!r}, which base {base!r} "
                                      "does not have; the adapter was trained on another model: retrain it on "
                                      "the declared base or fix model.base")


def _check_rows(model: Any, vocab_size: int, base: str) -> None:
    for what, layer in (("input embeddings", model.get_input_embeddings()),
                        ("output layer", model.get_output_embeddings())):
        rows = None if layer is None else layer.weight.shape[0]
        if rows is not None and rows != vocab_size:
            raise CardValidationError(f"model: the loaded card's {what} have {rows} rows but base {base!r} has "
                                      f"{vocab_size} tokens; a card must share its base's vocabulary")


def _gist(error: BaseException) -> str:
    """The first informative line of a loader error (state-dict errors list every tensor)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    informative = [line for line in lines if not line.endswith(":")] or lines or [type(error).__name__]
    more = f" (and {len(informative) - 1} more)" if len(informative) > 1 else ""
    return informative[0][:300] + more


def _check_runtime(base: str, adapter: Path, model: Any, weights_name: str) -> None:
    """On a GGUF base the card is served by llama.cpp with its LoRA converted to GGUF: convert it now
    (cached by content, so registration pays for it once) and check the runtime's distribution on the
    probe prompt matches transformers'. Other bases are served by transformers, checked above."""
    from rag.runtime import LocalModelError, load_model, resolve_model

    try:
        if resolve_model(base).kind != "gguf":
            return
    except LocalModelError:
        return
    try:
        runtime = load_model(base, adapter=adapter)
    except LocalModelError as error:
        raise CardValidationError(f"{weights_name}: the llama.cpp runtime cannot apply this adapter ({error}); "
                                  "train a plain LoRA (bias='none') on attention/MLP projections") from None
    ids = runtime.encode(PROBE_PROMPT)
    with torch.inference_mode():
        expected = torch.softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
    got = torch.softmax(runtime.score(ids).float(), -1)
    shared = min(expected.shape[-1], got.shape[-1])
    distance = float(0.5 * (got[:, :shared] - expected[:, :shared]).abs().sum(-1).max())
    if distance > RUNTIME_TOLERANCE:
        raise CardValidationError(f"{weights_name}: on the llama.cpp runtime the card's next-token distribution "
                                  f"differs from transformers' (total variation {distance:.2f} > "
                                  f"{RUNTIME_TOLERANCE}); the adapter does not convert faithfully to GGUF for "
                                  f"base {base!r}")


def _generate(model: Any, tokenizer: Any, weights_name: str) -> str:
    inputs = tokenizer(PROBE_PROMPT, return_tensors="pt")
    with torch.inference_mode():
        logits = model(**inputs).logits
        if not torch.isfinite(logits).all():
            raise CardValidationError(f"{weights_name}: the card produces non-finite logits (NaN or inf) on "
                                      "its base; the weights are corrupt or diverged in training: retrain or "
                                      "export them again")
        output = model.generate(**inputs, max_new_tokens=PROBE_TOKENS, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id)
    new_tokens = output[0, inputs["input_ids"].shape[1]:]
    if len(new_tokens) == 0:
        raise CardValidationError(f"{weights_name}: the card generated nothing for a probe prompt; check the "
                                  "weights and the base's generation config")
    return tokenizer.decode(new_tokens, skip_special_tokens=True)
