"""What an embedder *is*, as a stable string: backend, recipe version, a content hash of the files it
runs, and its output dimension.

Why: a collection names its embedder (`config.embedder.model`), but what a name resolves to can change
under it: the onnx-int8 recipe was revised (`onnx_embedder.QUANTIZED_FILE`), and an operator can
re-point a registered name in `<home>/embedders.toml` at another model folder. Vectors stored by one
embedder and queries embedded by another then disagree silently. Every commit records the fingerprint
of the embedder that produced its vectors (per segment, `indexes.segment`), and readers compare
(`indexes.embedder_check`).

The format is `backend|recipe|sha256:<16 hex>|<dim>`, readable in `mighty index stats`, parsed back
by `Fingerprint.parse`. Hashing a 90 MB model takes ~0.2 s, so a file's digest is computed once per
process and cached by (path, size, mtime): later calls cost a `stat`. This is the one home of the
mechanism; every backend builds its fingerprint with `fingerprint_of`.
"""
from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_CHUNK = 1 << 20
_DIGESTS: dict[tuple[str, int, int], str] = {}
_LOCK = threading.Lock()


@dataclass(frozen=True)
class Fingerprint:
    backend: str
    recipe: str
    weights: str  # "sha256:" + the first 16 hex digits of a hash over the files' digests, in order
    dim: int

    def __str__(self) -> str:
        return f"{self.backend}|{self.recipe}|{self.weights}|{self.dim}"

    @classmethod
    def parse(cls, text: str) -> "Fingerprint | None":
        """The parts of a stored fingerprint; None for text not in this format (never an error:
        stats and messages only describe it)."""
        parts = text.split("|")
        if len(parts) != 4 or not parts[3].isdigit():
            return None
        return cls(parts[0], parts[1], parts[2], int(parts[3]))


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's content, computed once per process per (path, size, mtime)."""
    resolved = Path(path).resolve()
    stat = resolved.stat()
    key = (str(resolved), stat.st_size, stat.st_mtime_ns)
    with _LOCK:
        cached = _DIGESTS.get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    with open(resolved, "rb") as handle:
        while block := handle.read(_CHUNK):
            digest.update(block)
    value = digest.hexdigest()
    with _LOCK:
        _DIGESTS[key] = value
    return value


def fingerprint_of(backend: str, recipe: str, files: Iterable[str | os.PathLike], dim: int) -> str:
    """The fingerprint of an embedder that runs `files` (weights, tokenizer) under `recipe`.
    Only file contents count, never their paths: the same model copied elsewhere keeps its fingerprint."""
    combined = hashlib.sha256()
    for path in files:
        combined.update(file_digest(path).encode())
    return str(Fingerprint(backend, recipe, f"sha256:{combined.hexdigest()[:16]}", int(dim)))


def existing(folder: Path, *names: str) -> list[Path]:
    """The files among `names` that exist in `folder` (optional ones, e.g. tokenizer.json), in order."""
    return [folder / name for name in names if (folder / name).is_file()]


def embedder_fingerprint(embedder: object) -> str | None:
    """The fingerprint an embedder reports; None for one without (test doubles, custom embedders):
    vectors from it are recorded as of unknown origin, which no reader checks."""
    value = getattr(embedder, "fingerprint", None)
    return str(value) if value else None


def describe_change(stored: str, current: str) -> str:
    """'recipe int8-v1 -> int8-v2' style wording of what differs between two fingerprints."""
    old, new = Fingerprint.parse(stored), Fingerprint.parse(current)
    if old is None or new is None:
        return f"{stored} -> {current}"
    changes = [f"{label} {a} -> {b}" for label, a, b in (
        ("backend", old.backend, new.backend), ("recipe", old.recipe, new.recipe),
        ("weights", old.weights, new.weights), ("dimension", old.dim, new.dim)) if a != b]
    return ", ".join(changes) or "identical"
