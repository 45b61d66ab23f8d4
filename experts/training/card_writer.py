"""Write a trained card folder: `adapter/` (peft LoRA, safetensors) and `card.toml`.

The adapter is written aside and renamed into place, and the manifest is written last, also by
rename: a folder with a `card.toml` is always a complete card, whatever interrupted the run. No
tokenizer is written: a card always decodes with its base's tokenizer, which is what lets its
logits be fused token by token with the base.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from experts.manifest import CardManifest, dump_manifest
from experts.training.corpus import Corpus
from indexes.durable import fsync_path, fsync_tree

ADAPTER_DIR = "adapter"
MANIFEST_FILE = "card.toml"


def write_adapter(model: Any, out: Path, base: str) -> Path:
    """Save the LoRA weights of a peft model under `out/adapter` (replacing an older one)."""
    out.mkdir(parents=True, exist_ok=True)
    temporary = out / f".{ADAPTER_DIR}.tmp-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    for config in model.peft_config.values():
        config.base_model_name_or_path = base  # the reference the manifest uses, not a local cache path
    model.save_pretrained(str(temporary), safe_serialization=True, save_embedding_layers=False)
    (temporary / "README.md").unlink(missing_ok=True)  # peft's hub model-card stub; card.toml describes the card
    for path in temporary.iterdir():
        path.chmod(0o644)  # safetensors writes owner-only files; a card is shared (registry, server, other users)
    fsync_tree(temporary)
    final = out / ADAPTER_DIR
    if final.exists():
        old = out / f".{ADAPTER_DIR}.old-{os.getpid()}"
        os.rename(final, old)
        os.rename(temporary, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(temporary, final)
    fsync_path(out)
    return final


def write_manifest(manifest: CardManifest, out: Path) -> Path:
    temporary = out / f".{MANIFEST_FILE}.tmp-{os.getpid()}"
    dump_manifest(manifest, temporary)
    fsync_path(temporary)
    final = out / MANIFEST_FILE
    os.replace(temporary, final)
    fsync_path(out)
    return final


def describe_corpus(corpus: Corpus, train_keys: list[str], limit: int = 8) -> str:
    """A default description (auto-routing compares queries with it): the corpus and its largest documents."""
    sizes = {document.key: len(document.text) for document in corpus.documents}
    largest = sorted(train_keys, key=lambda key: (-sizes.get(key, 0), key))[:limit]
    examples = "; ".join(largest)
    more = f" and {len(train_keys) - len(largest)} more" if len(train_keys) > len(largest) else ""
    text = f"Trained on {corpus.name} ({len(train_keys)} documents): {examples}{more}."
    return text if len(text) <= 2000 else text[:1997] + "..."
