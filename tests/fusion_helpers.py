"""Builders for fusion tests: real (small) LoRA cards on SmolLM2 and tiny corpora."""
from __future__ import annotations

import json
from pathlib import Path

import torch

BASE = "smollm2-135m-instruct"


def write_manifest(folder: Path, name: str, base: str = BASE, adapter: str | None = "adapter",
                   full: str | None = None, kind: str = "fusion", heldout: dict | None = None,
                   steers: list[str] | None = None) -> None:
    from experts.manifest import CardManifest, dump_manifest

    data = {"name": name, "version": "1.0.0", "domain": "tests", "description": "a card made by a test",
            "owner": "qa", "kind": kind, "model": {"base": base, "adapter": adapter, "full": full, "steers": steers or []}}
    if heldout is not None:
        data["heldout"] = heldout
    dump_manifest(CardManifest.model_validate(data), folder / "card.toml")


def make_lora_card(folder: Path, name: str = "noisy", seed: int = 0, scale: float = 0.02, rank: int = 4,
                   heldout: dict | None = None, steers: list[str] | None = None) -> Path:
    """A fusion card whose LoRA has random non-zero A and B: a real expert that disagrees with the base.

    scale=0 keeps peft's own initialisation (B = 0): a card identical to its base."""
    from peft import LoraConfig, get_peft_model

    from experts.models import load_base

    folder.mkdir(parents=True, exist_ok=True)
    model = load_base(BASE, fresh=True).model
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=["q_proj", "v_proj", "down_proj"],
                        init_lora_weights=scale == 0)
    peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter_name, parameter in peft_model.named_parameters():
            if "lora_" in parameter_name and scale:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
    peft_model.save_pretrained(str(folder / "adapter"), safe_serialization=True)
    write_manifest(folder, name, heldout=heldout, steers=steers)
    return folder


def tiny_model(vocab: int, seed: int):
    """A two-layer random Llama: cheap stand-in for another model (its predictions are noise)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(config).eval()


def larger_base(folder: Path, seed: int = 7) -> Path:
    """Stands in for a larger base of the card's family (like Qwen 1.5B for a 0.5B card): other weights,
    SmolLM2's tokenizer, so fusion with SmolLM2 cards is possible when a card declares it."""
    from experts.fusion.fused import tokenizer_of

    tokenizer = tokenizer_of(BASE)
    tiny_model(len(tokenizer), seed).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def write_corpus(path: Path, documents: list[tuple[str, str]]) -> Path:
    with open(path, "w", encoding="utf-8") as handle:
        for index, (title, text) in enumerate(documents):
            handle.write(json.dumps({"_id": f"d{index}", "title": title, "text": text}) + "\n")
    return path


TOPICS = ["startups", "programming languages", "essays", "investors", "hackers", "cities", "wealth", "design"]


def tiny_corpus(path: Path, documents: int = 8) -> Path:
    """Short English documents, one per title, varied enough that models disagree on them."""
    docs = []
    for index in range(documents):
        topic = TOPICS[index % len(TOPICS)]
        docs.append((f"On {topic} {index}",
                     f"The most important thing about {topic} is that people usually misjudge it. When you look "
                     f"closely at {topic}, you find that the best approach is to start small, learn from users, "
                     f"and keep improving. Essay number {index} argues this with examples from {topic}."))
    return write_corpus(path, docs)
