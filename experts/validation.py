"""Checks a card folder must pass before the registry stores it.

Two phases, both run on register:

- static (milliseconds): the folder holds only regular files of allow-listed types, within size
  limits, with no symlinks (a link could point anywhere, and reading through it would leak or load
  files from outside the card); the manifest validates; the artifact it names is a folder inside the
  card; weights are safetensors or GGUF whose headers parse. Pickle formats are refused outright
  because unpickling runs arbitrary code.
- load (seconds): the weights load on the declared base, produce finite logits and generate, and the
  vocabulary matches the base's (a card with another tokenizer would emit ids that mean different
  words to the base, which silently breaks logit fusion).

Every failure raises `CardValidationError("<file or field>: reason; what to do")`.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from pydantic_settings import BaseSettings, SettingsConfigDict

from experts.errors import CardValidationError
from experts.manifest import MANIFEST_NAMES, CardManifest, ManifestError, parse_manifest

ALLOWED_SUFFIXES = frozenset({".json", ".jsonl", ".txt", ".md", ".model", ".toml", ".yaml", ".yml",
                              ".safetensors", ".gguf", ".jinja", ".tiktoken"})
ALLOWED_NAMES = frozenset({"LICENSE", "README", "NOTICE", ".gitattributes"})
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz"})
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
_GIB = 1024 ** 3


class CardLimits(BaseSettings):
    """Size limits of one card (environment: MIGHTY_CARD_MAX_BYTES, _MAX_FILE_BYTES, _MAX_FILES)."""

    model_config = SettingsConfigDict(env_prefix="MIGHTY_CARD_", extra="ignore")

    max_bytes: int = 4 * _GIB
    max_file_bytes: int = 2 * _GIB
    max_files: int = 256


@dataclass(frozen=True)
class CardFile:
    relative: str  # POSIX path inside the card folder
    size: int


@dataclass(frozen=True)
class StaticReport:
    manifest: CardManifest
    manifest_file: str
    files: list[CardFile]

    @property
    def size_bytes(self) -> int:
        return sum(f.size for f in self.files)


@dataclass(frozen=True)
class LoadReport:
    sample: str  # what the card generated for the probe prompt
    vocab_size: int
    seconds: float


def _fail(where: str, reason: str) -> CardValidationError:
    return CardValidationError(f"{where}: {reason}")


def scan(folder: Path, limits: CardLimits) -> list[CardFile]:
    """Every file of a card folder; refuses links, special files, disallowed types and oversize cards."""
    if folder.is_symlink() or not folder.is_dir():
        raise _fail(str(folder), "a card is a folder (not a link) holding its manifest and weights")
    found: list[CardFile] = []
    total = 0

    def walk(directory: Path, prefix: str) -> None:
        nonlocal total
        with os.scandir(directory) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                relative = f"{prefix}{entry.name}"
                if entry.is_symlink():
                    raise _fail(relative, "symbolic links are not allowed in a card (one could point outside "
                                          "it); copy the real file into the card folder")
                if entry.is_dir(follow_symlinks=False):
                    walk(Path(entry.path), relative + "/")
                    continue
                if not entry.is_file(follow_symlinks=False):
                    raise _fail(relative, "not a regular file (device, pipe or socket); remove it")
                _check_type(relative)
                size = entry.stat(follow_symlinks=False).st_size
                if size > limits.max_file_bytes:
                    raise _fail(relative, f"{size} bytes is over the per-file limit of {limits.max_file_bytes} "
                                          "(MIGHTY_CARD_MAX_FILE_BYTES); shard the weights or raise the limit")
                total += size
                if total > limits.max_bytes:
                    raise _fail(relative, f"the card passes the total size limit of {limits.max_bytes} bytes "
                                          "(MIGHTY_CARD_MAX_BYTES); ship a LoRA adapter instead of full weights "
                                          "or raise the limit")
                found.append(CardFile(relative, size))
                if len(found) > limits.max_files:
                    raise _fail(relative, f"a card may hold at most {limits.max_files} files "
                                          "(MIGHTY_CARD_MAX_FILES); remove what the card does not need")

    walk(folder, "")
    return found


def _check_type(relative: str) -> None:
    path = PurePosixPath(relative)
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise _fail(relative, f"{suffix} files can hold pickles, which run code when loaded, so cards never "
                              "contain them; save weights with safetensors (save_pretrained(..., "
                              "safe_serialization=True)) and delete this file")
    if suffix not in ALLOWED_SUFFIXES and path.name not in ALLOWED_NAMES:
        allowed = " ".join(sorted(ALLOWED_SUFFIXES))
        raise _fail(relative, f"file type not allowed in a card (allowed: {allowed}); remove it")


def check_static(folder: Path, limits: CardLimits | None = None, source_name: str | None = None) -> StaticReport:
    """The cheap checks; `source_name` is how errors name the manifest (e.g. the user's own path)."""
    files = scan(folder, limits or CardLimits())
    names = {f.relative for f in files}
    manifests = [name for name in MANIFEST_NAMES if name in names]
    if len(manifests) != 1:
        reason = "has several manifests: keep one" if manifests else "has no manifest"
        raise _fail(str(source_name or folder), f"the card folder {reason} ({' or '.join(MANIFEST_NAMES)})")
    try:
        text = (folder / manifests[0]).read_text(encoding="utf-8")
        manifest = parse_manifest(text, source_name or manifests[0])
    except UnicodeDecodeError:
        raise _fail(str(source_name or manifests[0]), "not UTF-8 text; save the manifest as UTF-8") from None
    except ManifestError as error:
        raise CardValidationError(f"{error}; fix the manifest and register again") from None
    artifact = artifact_dir(folder, manifest)
    prefix = artifact.relative_to(folder.resolve()).as_posix()
    prefix = "" if prefix == "." else prefix + "/"
    if manifest.model.adapter is not None:
        _check_adapter_files(artifact, prefix)
    else:
        _check_full_files(artifact, prefix)
    for name in sorted(names):
        if name.endswith(".safetensors"):
            safetensors_header(folder / name, name)
        elif name.endswith(".gguf"):
            with open(folder / name, "rb") as handle:
                if handle.read(4) != b"GGUF":
                    raise _fail(name, "not a GGUF file (bad magic bytes); export it again with llama.cpp")
    return StaticReport(manifest, manifests[0], files)


def artifact_dir(folder: Path, manifest: CardManifest) -> Path:
    """The adapter or model folder named by the manifest, proven to lie inside the card folder."""
    field = "model.adapter" if manifest.model.adapter is not None else "model.full"
    raw = manifest.model.artifact
    pure = PurePosixPath(raw)
    if not raw or "\\" in raw or pure.is_absolute() or PureWindowsPath(raw).drive or ".." in pure.parts:
        raise _fail(field, f"{raw!r} must be a relative path inside the card folder (no '..', not absolute); "
                           "move the weights into the card folder and name them relative to the manifest")
    root = folder.resolve()
    target = (folder / pure).resolve()
    if not target.is_relative_to(root):
        raise _fail(field, f"{raw!r} resolves outside the card folder; move the weights into it")
    if not target.is_dir():
        raise _fail(field, f"{raw!r} is not a folder in the card; it must hold the "
                           + ("peft adapter (adapter_config.json + adapter_model.safetensors)"
                              if field == "model.adapter" else "model (config.json + *.safetensors)"))
    return target


def _check_adapter_files(adapter: Path, prefix: str) -> None:
    config = _json_object(adapter / "adapter_config.json", prefix + "adapter_config.json",
                          "save the adapter with peft's save_pretrained")
    if config.get("peft_type") != "LORA":
        raise _fail(prefix + "adapter_config.json", f"peft_type is {config.get('peft_type')!r}; cards take LoRA "
                                                    "adapters (peft LoraConfig)")
    if not (adapter / "adapter_model.safetensors").is_file():
        raise _fail(prefix + "adapter_model.safetensors", "missing; save the adapter with "
                                                          "save_pretrained(dir, safe_serialization=True)")


def _check_full_files(model: Path, prefix: str) -> None:
    _json_object(model / "config.json", prefix + "config.json", "save the model with save_pretrained")
    if not any(model.glob("*.safetensors")):
        raise _fail(prefix + "*.safetensors", "the model folder has no safetensors weights; save it with "
                                              "save_pretrained(dir, safe_serialization=True)")


def _json_object(path: Path, name: str, hint: str) -> dict[str, Any]:
    if not path.is_file():
        raise _fail(name, f"missing; {hint}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _fail(name, f"not valid JSON ({error}); {hint}") from None
    if not isinstance(data, dict):
        raise _fail(name, f"must be a JSON object; {hint}")
    return data


def safetensors_header(path: Path, name: str) -> dict[str, Any]:
    """The tensor table of a safetensors file, read without loading it (and proving it is one)."""
    hint = "it is not a safetensors file; save the weights again with safe_serialization=True"
    size = path.stat().st_size
    with open(path, "rb") as handle:
        raw = handle.read(8)
        length = int.from_bytes(raw, "little") if len(raw) == 8 else -1
        if length < 2 or length > min(size - 8, 100 * 1024 * 1024):
            raise _fail(name, hint)
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise _fail(name, hint) from None
    if not isinstance(header, dict):
        raise _fail(name, hint)
    data_bytes = size - 8 - length
    for key, info in header.items():
        if key == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and 0 <= offsets[0] <= offsets[1] <= data_bytes
                and isinstance(info.get("shape"), list)):
            raise _fail(name, f"tensor {key!r} has a broken header entry (truncated file?); {hint}")
    return header


def check_loads(folder: Path, manifest: CardManifest) -> LoadReport:
    """The expensive checks: load on the base, compare vocabularies, generate a few tokens."""
    from experts.load_check import run_load_checks

    started = time.perf_counter()
    sample, vocab_size = run_load_checks(folder, manifest, artifact_dir(folder, manifest))
    return LoadReport(sample, vocab_size, time.perf_counter() - started)
