"""Generations: numbered, immutable views of a collection (which segments, which rows deleted).

Layout of a collection folder:
    collection.json          frozen settings
    segments/<id>/           immutable segments
    generations/<n>/         manifest.json + deletes-<segment>.npy
    CURRENT                  the committed generation number, replaced atomically
A writer publishes segments, then a generation folder, then CURRENT. Readers follow CURRENT only,
so they always see a complete generation, and a crash at any step leaves the previous one intact.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from indexes.durable import atomic_write_text, publish_folder

CURRENT = "CURRENT"


@dataclass(frozen=True)
class SegmentRef:
    id: str
    rows: int
    deleted: int = 0


@dataclass(frozen=True)
class EmbedderShare:
    """Live chunks whose vectors one embedder produced (`indexes.embedder_fingerprint`); fingerprint
    None: unknown origin (written before fingerprints existed, or vectors supplied by the caller)."""

    fingerprint: str | None
    chunks: int


@dataclass
class Manifest:
    generation: int
    segments: list[SegmentRef] = field(default_factory=list)
    documents: int = 0
    chunks: int = 0
    created_at: float = 0.0
    fusion: dict | None = None  # the fusion calibration measured at commit (indexes.calibration)
    # which embedders produced the live vectors, summed from the segments' runs at commit
    # (indexes.embedder_provenance); empty in manifests written before fingerprints: all unknown
    embedders: list[EmbedderShare] = field(default_factory=list)

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        raw = json.loads(text)
        raw["segments"] = [SegmentRef(**s) for s in raw["segments"]]
        raw["embedders"] = [EmbedderShare(**e) for e in raw.get("embedders") or []]
        return cls(**raw)

    def embedder_shares(self) -> list[EmbedderShare]:
        """`embedders`, or for an older manifest all its chunks as of unknown origin."""
        if self.embedders or not self.chunks:
            return list(self.embedders)
        return [EmbedderShare(None, self.chunks)]


def current_generation(folder: Path) -> int | None:
    try:
        return int((folder / CURRENT).read_text(encoding="utf-8").strip())
    except FileNotFoundError:
        return None


def generation_folder(folder: Path, generation: int) -> Path:
    return folder / "generations" / f"{generation:08d}"


def read_generation(folder: Path, generation: int) -> tuple[Manifest, dict[str, np.ndarray]]:
    gen_dir = generation_folder(folder, generation)
    manifest = Manifest.from_json((gen_dir / "manifest.json").read_text(encoding="utf-8"))
    deletes = {}
    for ref in manifest.segments:
        if ref.deleted:
            deletes[ref.id] = np.load(gen_dir / f"deletes-{ref.id}.npy", allow_pickle=False)
    return manifest, deletes


def next_generation_number(folder: Path) -> int:
    """Above every generation folder ever published, so an abandoned one is never reused."""
    numbers = [int(p.name) for p in (folder / "generations").glob("[0-9]*") if p.name.isdigit()]
    return max(numbers, default=0) + 1


def commit_generation(folder: Path, manifest: Manifest, deletes: dict[str, np.ndarray]) -> None:
    """Publish a generation folder, then point CURRENT at it."""
    manifest.created_at = time.time()
    generations = folder / "generations"
    generations.mkdir(exist_ok=True)
    temporary = generations / f".tmp-{manifest.generation:08d}-{os.getpid()}"
    if temporary.exists():
        shutil.rmtree(temporary)
    temporary.mkdir()
    for segment_id, rows in deletes.items():
        if len(rows):
            np.save(temporary / f"deletes-{segment_id}.npy", np.asarray(rows, dtype=np.int64), allow_pickle=False)
    payload = asdict(manifest)
    (temporary / "manifest.json").write_text(json.dumps(payload, indent=2), encoding="utf-8")
    publish_folder(temporary, generation_folder(folder, manifest.generation))
    atomic_write_text(folder / CURRENT, f"{manifest.generation}\n")


def collect_garbage(folder: Path, keep: int) -> None:
    """Drop generations beyond the newest `keep`, abandoned ones, temp folders and unused segments."""
    current = current_generation(folder)
    generations = folder / "generations"
    published = sorted(int(p.name) for p in generations.glob("[0-9]*") if p.name.isdigit())
    kept = [g for g in published if current is not None and g <= current][-keep:]
    for number in published:
        if number not in kept:
            shutil.rmtree(generation_folder(folder, number), ignore_errors=True)
    used: set[str] = set()
    for number in kept:
        manifest, _ = read_generation(folder, number)
        used.update(ref.id for ref in manifest.segments)
    for path in (folder / "segments").iterdir():
        if path.name not in used:
            shutil.rmtree(path, ignore_errors=True)
    for path in generations.glob(".tmp-*"):
        shutil.rmtree(path, ignore_errors=True)


def list_generations(folder: Path) -> list[int]:
    return sorted(int(p.name) for p in (folder / "generations").glob("[0-9]*") if p.name.isdigit())
