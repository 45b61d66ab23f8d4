"""Build real (tiny) cards for tests: a LoRA adapter on the default base plus a manifest."""
from __future__ import annotations

from pathlib import Path

BASE = "smollm2-135m-instruct"


def make_card(folder: Path, name: str = "essays", version: str = "1", *, owner: str = "essays-team",
              description: str = "Paul Graham's essays on startups, founders and programming",
              domain: str = "startup essays", kind: str = "knowledge", collection: str | None = None,
              generation: dict | None = None, seed: int = 0) -> Path:
    """A card folder with `card.toml` and `adapter/` (a rank-4 LoRA, randomised so it differs from the base)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from experts.manifest import CardManifest, dump_manifest
    from experts.models import load_base

    folder.mkdir(parents=True, exist_ok=True)
    base = load_base(BASE, fresh=True).model
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter_name, parameter in peft_model.named_parameters():
            if "lora_B" in parameter_name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.01)
    peft_model.save_pretrained(folder / "adapter", safe_serialization=True)
    manifest = CardManifest(name=name, version=version, domain=domain, description=description, owner=owner,
                            kind=kind, model={"base": BASE, "adapter": "adapter"}, collection=collection,
                            generation=generation or {"passages": 2, "max_new_tokens": 24})
    dump_manifest(manifest, folder / "card.toml")
    return folder
