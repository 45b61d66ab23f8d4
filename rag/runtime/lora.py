"""peft LoRA adapters as GGUF LoRA files, so llama.cpp applies a card's adapter at run time.

Cards are trained with peft (transformers is the right tool for training) and saved as
`adapter_model.safetensors`; llama.cpp reads LoRA adapters only as GGUF. The conversion is what
llama.cpp's `convert_lora_to_gguf.py` does, in a few lines with the `gguf` package: tensors named
`blk.N.attn_q.weight.lora_a/.lora_b` (A is [r, in], B is [out, r], exactly peft's shapes),
`general.type=adapter`, `adapter.type=lora`, `adapter.lora.alpha`. For the llama architecture the
GGUF stores q/k projections with their rows permuted for rotary embeddings, so B (the output side)
of q_proj and k_proj gets the same permutation. Tensors stay float32: they are small, and exact.

Each converted adapter is cached under `$MIGHTY_MODEL_CACHE/lora/`, keyed by the adapter's bytes
and the base file, written aside and renamed into place.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import uuid
from pathlib import Path

import numpy as np

from indexes.config import model_cache_dir
from rag.runtime.registry import LocalModelError

_FORMAT = 1  # bump when the conversion changes, to invalidate cached files
_PERMUTED_ARCHS = {"llama"}  # archs whose GGUF converter permutes q/k rows (convert_hf_to_gguf.LlamaModel)


class AdapterError(LocalModelError):
    """A LoRA adapter that llama.cpp cannot apply; the message says why."""


def _field(reader, key: str):
    field = reader.fields.get(key)
    if field is None:
        return None
    value = field.parts[field.data[0]]
    return bytes(value).decode() if field.types and field.types[0].name == "STRING" else value.tolist()[0]


def _base_facts(base: Path) -> dict:
    from gguf import GGUFReader

    reader = GGUFReader(str(base))
    arch = _field(reader, "general.architecture")
    return {"arch": arch, "blocks": _field(reader, f"{arch}.block_count"),
            "heads": _field(reader, f"{arch}.attention.head_count"),
            "kv_heads": _field(reader, f"{arch}.attention.head_count_kv")}


def _permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """convert_hf_to_gguf's rotary permutation of output rows (applied per head)."""
    return (weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def adapter_key(adapter_dir: Path, base: Path) -> str:
    digest = hashlib.sha256(f"{_FORMAT}\0{base.name}\0{base.stat().st_size}\0".encode())
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        with open(adapter_dir / name, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()[:32]


def gguf_adapter(adapter_dir: Path, base: Path, cache_root: Path | None = None) -> Path:
    """The GGUF LoRA for a peft adapter folder on a GGUF base, converted once and cached."""
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_model.safetensors").is_file() or not (adapter_dir / "adapter_config.json").is_file():
        raise AdapterError(f"{adapter_dir}: a card adapter is a peft LoRA folder with adapter_config.json and "
                           "adapter_model.safetensors")
    target = (cache_root or model_cache_dir()) / "lora" / f"{adapter_key(adapter_dir, base)}.gguf"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}-{target.name}")
    try:
        convert_adapter(adapter_dir, base, tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def convert_adapter(adapter_dir: Path, base: Path, out: Path) -> None:
    """Write a GGUF LoRA for `base` from a peft adapter folder."""
    import gguf
    from safetensors.numpy import load_file

    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    for flag, why in (("use_dora", "DoRA"), ("modules_to_save", "modules_to_save (full layers)")):
        if config.get(flag):
            raise AdapterError(f"{adapter_dir}: {why} cannot be applied by llama.cpp; train a plain LoRA")
    if config.get("bias", "none") != "none":
        raise AdapterError(f"{adapter_dir}: LoRA biases cannot be applied by llama.cpp; train with bias='none'")
    facts = _base_facts(base)
    arch = facts["arch"]
    names = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}
    if arch not in names:
        raise AdapterError(f"{base.name}: unknown architecture {arch!r}")
    mapping = gguf.get_tensor_name_map(names[arch], int(facts["blocks"]))
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    alpha = float(config.get("lora_alpha", 8))
    uniform = not (config.get("rank_pattern") or config.get("alpha_pattern") or config.get("use_rslora"))
    writer = gguf.GGUFWriter(str(out), arch)
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    # llama.cpp scales by alpha / rank; where peft's scaling is not uniform it is folded into B (alpha 0 = scale 1)
    writer.add_float32("adapter.lora.alpha", alpha if uniform else 0.0)
    pairs = sorted({key.split(".lora_")[0] for key in tensors if ".lora_" in key})
    if not pairs:
        raise AdapterError(f"{adapter_dir}: no lora_A/lora_B tensors found")
    for module in pairs:
        a, b = tensors.get(f"{module}.lora_A.weight"), tensors.get(f"{module}.lora_B.weight")
        hf_name = module.removeprefix("base_model.model.")
        gguf_name = mapping.get_name(hf_name + ".weight", try_suffixes=(".weight",))
        if a is None or b is None or gguf_name is None:
            raise AdapterError(f"{adapter_dir}: module {hf_name!r} has no llama.cpp counterpart on {base.name} "
                               "(LoRA on attention and MLP projections is supported)")
        a, b = a.astype(np.float32), b.astype(np.float32)
        if not uniform:
            r_module = a.shape[0]
            short = hf_name.split(".")[-1]
            a_module = float((config.get("alpha_pattern") or {}).get(short, alpha))
            b = b * (a_module / (math.sqrt(r_module) if config.get("use_rslora") else r_module))
        if arch in _PERMUTED_ARCHS and hf_name.endswith(("q_proj", "k_proj")):
            heads = facts["heads"] if hf_name.endswith("q_proj") else (facts["kv_heads"] or facts["heads"])
            b = _permute(b, int(heads))
        writer.add_tensor(f"{gguf_name}.lora_a", np.ascontiguousarray(a))  # gguf_name ends in ".weight"
        writer.add_tensor(f"{gguf_name}.lora_b", np.ascontiguousarray(b))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
