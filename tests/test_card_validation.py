"""Every validation failure is a clear CardValidationError and leaves the registry (rows and store) unchanged."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from api.db import open_database
from experts.registry import Actor, CardRegistry, CardValidationError
from experts.validation import CardLimits
from tests.cards_helpers import BASE, manifest_text, snapshot, write_card

ALPHA = Actor("alice", "alpha")


@pytest.fixture
def registry(tmp_path, tiny_adapter):
    """A SQLite registry that already holds one active card (so 'unchanged' covers existing data)."""
    engine = open_database(f"sqlite:///{tmp_path / 'mighty.db'}")
    registry = CardRegistry(engine, tmp_path / "cards")
    registry.register(write_card(tmp_path / "existing", tiny_adapter, name="existing"), ALPHA)
    yield registry
    engine.dispose()


def _manifest(folder: Path, **fields) -> None:
    (folder / "card.toml").write_text(manifest_text("tiny", "1.0.0", "alpha", **fields), encoding="utf-8")


def _rewrite_weights(folder: Path, change) -> None:
    from safetensors.torch import load_file, save_file

    path = folder / "adapter" / "adapter_model.safetensors"
    tensors = load_file(str(path))
    path.unlink()
    save_file(change(tensors), str(path))


def _edit_config(folder: Path, **changes) -> None:
    path = folder / "adapter" / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _bad_schema(folder: Path) -> None:
    (folder / "card.toml").write_text(manifest_text("Bad Name!", "1.0.0", "alpha"), encoding="utf-8")


def _missing_field(folder: Path) -> None:
    text = (folder / "card.toml").read_text().replace('description = "A tiny test card."\n', "")
    (folder / "card.toml").write_text(text)


def _symlink_out(folder: Path) -> None:
    os.symlink("/etc/hostname", folder / "adapter" / "notes.txt")


def _symlinked_adapter(folder: Path) -> None:
    real = folder.parent / f"{folder.name}-outside"
    (folder / "adapter").rename(real)
    os.symlink(real, folder / "adapter")


def _vocab_tokenizer(folder: Path) -> None:
    from experts.models import load_tokenizer

    tokenizer = load_tokenizer(BASE)
    tokenizer.add_tokens(["<domain-word>"])
    tokenizer.save_pretrained(str(folder))


def _resized_rows(folder: Path) -> None:
    import torch

    def add(tensors):
        return {**tensors, "base_model.model.lm_head.weight": torch.zeros(49152 + 8, 1)}

    _rewrite_weights(folder, add)


def _foreign_modules(folder: Path) -> None:
    _rewrite_weights(folder, lambda tensors: {k.replace("q_proj", "qkv_proj"): v for k, v in tensors.items()})


def _nan_weights(folder: Path) -> None:
    _rewrite_weights(folder, lambda tensors: {k: v.fill_(float("nan")) if "lora_B" in k else v
                                              for k, v in tensors.items()})


CASES = {
    # static phase: schema, paths, file types, weights format
    "schema": (_bad_schema, "card.toml:1: name: Value error, name must be"),
    "missing field": (_missing_field, "card.toml: description: Field required"),
    "path traversal": (lambda f: _manifest(f, adapter="../adapter"), "model.adapter: '../adapter' must be a relative"),
    "absolute path": (lambda f: _manifest(f, adapter=str(f / "adapter")), "model.adapter: '/"),
    "artifact not a folder": (lambda f: _manifest(f, adapter="nowhere"), "model.adapter: 'nowhere' is not a folder"),
    "symlink to a file outside": (_symlink_out, "adapter/notes.txt: symbolic links are not allowed"),
    "symlinked adapter folder": (_symlinked_adapter, "adapter: symbolic links are not allowed"),
    "pickle weights (.bin)": (lambda f: (f / "adapter" / "adapter_model.bin").write_bytes(b"\x80\x04K\x01."),
                              "adapter/adapter_model.bin: .bin files can hold pickles"),
    "pickle file (.pkl)": (lambda f: (f / "extra.pkl").write_bytes(b"\x80\x04K\x01."), "extra.pkl: .pkl files"),
    "two manifests": (lambda f: (f / "card.yaml").write_text("name: tiny"), "the folder has several manifests"),
    "binary manifest": (lambda f: (f / "card.toml").write_bytes(b"\xff\xfe\x00name"), "card.toml: cannot read"),
    "code file": (lambda f: (f / "setup.py").write_text("import os"), "setup.py: file type not allowed"),
    "fake safetensors": (lambda f: (f / "adapter" / "adapter_model.safetensors").write_bytes(b"\x80\x04" * 64),
                         "adapter/adapter_model.safetensors: it is not a safetensors file"),
    "fake gguf": (lambda f: (f / "model.gguf").write_bytes(b"PK\x03\x04" * 8), "model.gguf: not a GGUF file"),
    "no adapter config": (lambda f: (f / "adapter" / "adapter_config.json").unlink(),
                          "adapter/adapter_config.json: missing"),
    "no adapter weights": (lambda f: (f / "adapter" / "adapter_model.safetensors").unlink(),
                           "adapter/adapter_model.safetensors: missing"),
    "not a LoRA": (lambda f: _edit_config(f, peft_type="IA3"), "adapter/adapter_config.json: peft_type is 'IA3'"),
    # load phase: the base, the vocabulary, loading and generating
    "unknown base": (lambda f: _manifest(f, base="no-such-base"), "model.base: 'no-such-base' cannot be loaded"),
    "tokenizer vocabulary": (_vocab_tokenizer, "./: tokenizer vocabulary differs from base"),
    "resized vocabulary rows": (_resized_rows, "adapter/adapter_model.safetensors: tensor "
                                               "'base_model.model.lm_head.weight' has 49160 vocabulary rows"),
    "rank mismatch": (lambda f: _edit_config(f, r=8), "model.adapter: 'adapter' does not load on base "
                                                      "'smollm2-135m-instruct' (size mismatch for"),
    "modules the base lacks": (_foreign_modules, "adapter/adapter_model.safetensors: tensor"),
    "non-finite weights": (_nan_weights, "adapter/adapter_model.safetensors: the card produces non-finite logits"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_invalid_card_is_refused_and_nothing_changes(case, registry, tmp_path, tiny_adapter):
    damage, expected = CASES[case]
    folder = write_card(tmp_path / "candidate", tiny_adapter)
    damage(folder)
    before = snapshot(registry)
    with pytest.raises(CardValidationError) as refused:
        registry.register(folder, ALPHA)
    message = str(refused.value)
    assert expected in message, message
    assert message.split(":", 1)[0].strip(), "errors start with the file or field"
    assert snapshot(registry) == before
    assert list(registry.store.staging.iterdir()) == []


@pytest.mark.parametrize("limit, expected", [
    ({"max_file_bytes": 10_000}, "adapter/adapter_model.safetensors: 9"),
    ({"max_bytes": 100_000}, "passes the total size limit of 100000 bytes (MIGHTY_CARD_MAX_BYTES)"),
    ({"max_files": 2}, "at most 2 files"),
])
def test_size_limits(limit, expected, registry, tmp_path, tiny_adapter):
    registry.limits = CardLimits(**limit)
    before = snapshot(registry)
    with pytest.raises(CardValidationError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        registry.register(write_card(tmp_path / "candidate", tiny_adapter), ALPHA)
    assert snapshot(registry) == before


def test_limits_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("MIGHTY_CARD_MAX_BYTES", "12345")
    monkeypatch.setenv("MIGHTY_CARD_MAX_FILE_BYTES", "678")
    assert (CardLimits().max_bytes, CardLimits().max_file_bytes) == (12345, 678)


def test_a_full_model_card_must_share_the_base_vocabulary(registry, tmp_path):
    """Full-model cards (model.full) load too; a different vocabulary size is refused."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from experts.models import load_tokenizer

    def full_card(name: str, vocab_size: int) -> Path:
        folder = tmp_path / name
        config = LlamaConfig(vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                             num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
        LlamaForCausalLM(config).save_pretrained(str(folder / "model"), safe_serialization=True)
        load_tokenizer(BASE).save_pretrained(str(folder / "model"))
        text = manifest_text(name, "1", "alpha").replace('adapter = "adapter"', 'full = "model"')
        (folder / "card.toml").write_text(text, encoding="utf-8")
        return folder

    ref = registry.register(full_card("full", 49152), ALPHA)
    assert ref.active and (ref.artifact / "config.json").is_file()
    before = snapshot(registry)
    with pytest.raises(CardValidationError, match="model/config.json: vocab_size 1000 differs from base"):
        registry.register(full_card("small-vocab", 1000), ALPHA)
    assert snapshot(registry) == before


@pytest.mark.parametrize("example", ["tax-law.toml", "clinical-notes.yaml"])
def test_example_manifests_register(example, registry, tmp_path, tiny_adapter):
    """The documented examples in data/cards stay valid: next to an adapter they register as they are."""
    import shutil

    from tests.helpers import REPO

    folder = tmp_path / "example"
    shutil.copytree(tiny_adapter, folder / "adapter")
    shutil.copy(REPO / "data" / "cards" / example, folder / example)
    manifest = registry.register(folder / example, Actor("admin", None, True)).manifest
    assert manifest.name == example.split(".")[0] and manifest.model.adapter == "adapter"


def test_registration_converts_the_lora_for_the_runtime_and_checks_it(registry, tmp_path, tiny_adapter, monkeypatch):
    """A LoRA card on a GGUF base is converted to a GGUF LoRA once at registration (cached by content) and
    llama.cpp's next-token distribution with it is compared with transformers'."""
    import experts.load_check as load_check
    from rag.runtime.lora import adapter_key
    from rag.runtime.registry import resolve_model

    cache = Path(os.environ["MIGHTY_MODEL_CACHE"]) / "lora"
    converted = cache / f"{adapter_key(tiny_adapter, resolve_model(BASE).path)}.gguf"
    assert converted.is_file()  # the registry fixture registered a card with this adapter
    from tests.fusion_helpers import make_lora_card

    other = make_lora_card(tmp_path / "other", scale=0.02) / "adapter"  # new weights: not verified yet
    monkeypatch.setattr(load_check, "RUNTIME_TOLERANCE", 0.0)  # nothing quantised matches exactly
    before = snapshot(registry)
    with pytest.raises(CardValidationError, match="on the llama.cpp runtime the card's next-token distribution"):
        registry.register(write_card(tmp_path / "candidate", other, name="strict"), ALPHA)
    assert snapshot(registry) == before
