"""Building real (tiny) cards for tests: a LoRA adapter trained on nothing, on the real default base."""
from __future__ import annotations

import shutil
from pathlib import Path

BASE = "smollm2-135m-instruct"


def make_tiny_adapter(target: Path, seed: int = 0) -> Path:
    """A real peft LoRA (r=4 on q_proj/v_proj) with small random B, so it changes the base a little."""
    import torch
    from peft import LoraConfig, get_peft_model

    from experts.models import load_base

    torch.manual_seed(seed)
    base = load_base(BASE, fresh=True)
    model = get_peft_model(base.model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                  target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.01)
    model.save_pretrained(str(target), safe_serialization=True)
    return target


def manifest_text(name: str, version: str, owner: str, fmt: str = "toml", adapter: str = "adapter",
                  base: str = BASE, extra: str = "") -> str:
    if fmt == "yaml":
        return (f"name: {name}\nversion: \"{version}\"\ndomain: testing\ndescription: A tiny test card.\n"
                f"owner: {owner}\nmodel:\n  base: {base}\n  adapter: {adapter}\n{extra}")
    return (f'name = "{name}"\nversion = "{version}"\ndomain = "testing"\ndescription = "A tiny test card."\n'
            f'owner = "{owner}"\n{extra}\n[model]\nbase = "{base}"\nadapter = "{adapter}"\n')


def write_card(folder: Path, adapter_source: Path, name: str = "tiny", version: str = "1.0.0",
               owner: str = "alpha", fmt: str = "toml", **manifest) -> Path:
    """A card folder: the manifest plus a copy of the adapter in `adapter/`."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copytree(adapter_source, folder / "adapter", dirs_exist_ok=True)
    suffix = "yaml" if fmt == "yaml" else "toml"
    (folder / f"card.{suffix}").write_text(manifest_text(name, version, owner, fmt, **manifest), encoding="utf-8")
    return folder


def snapshot(registry) -> dict:
    """Everything a registry stores: every row of its tables and every path (with size) in its store."""
    from sqlalchemy import select

    from experts.tables import metadata

    rows = {}
    with registry._engine.connect() as connection:
        for table in metadata.sorted_tables:
            rows[table.name] = sorted(tuple(map(str, row)) for row in connection.execute(select(table)))
    files = sorted((str(p.relative_to(registry.store.root)), p.stat().st_size if p.is_file() else -1)
                   for p in registry.store.root.rglob("*"))
    return {"rows": rows, "files": files}


def make_card(folder: Path, name: str = "essays", version: str = "1", *, owner: str = "essays-team",
              description: str = "Paul Graham's essays on startups, founders and programming",
              domain: str = "startup essays", kind: str = "knowledge", collection: str | None = None,
              generation: dict | None = None, seed: int = 0) -> Path:
    """A card folder with a full manifest (`card.toml`) and its own tiny adapter."""
    from experts.manifest import CardManifest, dump_manifest

    folder.mkdir(parents=True, exist_ok=True)
    make_tiny_adapter(folder / "adapter", seed=seed)
    manifest = CardManifest(name=name, version=version, domain=domain, description=description, owner=owner,
                            kind=kind, model={"base": BASE, "adapter": "adapter"}, collection=collection,
                            generation=generation or {"passages": 2, "max_new_tokens": 24})
    dump_manifest(manifest, folder / "card.toml")
    return folder
