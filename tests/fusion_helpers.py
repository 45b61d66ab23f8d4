"""Builders for fusion tests: real (small) LoRA cards on SmolLM2 and tiny corpora."""
from __future__ import annotations

import json
from pathlib import Path

import torch

BASE = "smollm2-135m-instruct"


def write_manifest(folder: Path, name: str, base: str = BASE, adapter: str | None = "adapter",
                   full: str | None = None, kind: str = "fusion", heldout: dict | None = None) -> None:
    from experts.manifest import CardManifest, dump_manifest

    data = {"name": name, "version": "1.0.0", "domain": "tests", "description": "a card made by a test",
            "owner": "qa", "kind": kind, "model": {"base": base, "adapter": adapter, "full": full}}
    if heldout is not None:
        data["heldout"] = heldout
    dump_manifest(CardManifest.model_validate(data), folder / "card.toml")


def make_lora_card(folder: Path, name: str = "noisy", seed: int = 0, scale: float = 0.02, rank: int = 4,
                   heldout: dict | None = None) -> Path:
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
    write_manifest(folder, name, heldout=heldout)
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
