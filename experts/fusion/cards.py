"""Where fusion meets the card store: finding a card, and saving fitted weights as a new version.

Both are single functions so that the registry can be wired in one place each (see the
`wired at merge` notes): until then a card is a folder holding card.toml and its adapter.
"""
from __future__ import annotations

import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experts.manifest import CardManifest, FusionSettings, ManifestError, dump_manifest, load_manifest


class CardNotFound(LookupError):
    """No card answers to a name or path; the message says what was tried."""


@dataclass(frozen=True)
class CardRef:
    """A resolved card: its manifest and the folder its relative paths start from."""

    manifest: CardManifest
    folder: Path

    @property
    def label(self) -> str:
        return f"{self.manifest.name}@{self.manifest.version}"

    @property
    def base(self) -> str:
        return self.manifest.model.base

    @property
    def adapter(self) -> Path | None:
        return self.folder / self.manifest.model.adapter if self.manifest.model.adapter else None

    @property
    def full(self) -> Path | None:
        return self.folder / self.manifest.model.full if self.manifest.model.full else None


def resolve_card(name_or_path: str) -> CardRef:
    """A card by folder (or manifest file) path; registry names are looked up once the registry is merged."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        manifest = load_manifest(path)  # ManifestError names the file and line
        folder = path if path.is_dir() else path.parent
        if "fusion" not in manifest.kind:
            raise ManifestError(f"card {manifest.name!r} ({folder}) is not a fusion card (kind = "
                                f"{manifest.kind}); retrain it with `mighty cards train ... --kind fusion`")
        return CardRef(manifest, folder.resolve())
    # wired at merge: registry lookup by name, e.g. `CardRegistry.get(name, version)` for "name" or
    # "name@version", returning CardRef(ref.manifest, ref.path) after the same kind check.
    raise CardNotFound(f"no card {name_or_path!r}: give the path of a card folder (holding card.toml)")


def next_version(version: str) -> str:
    """1.0.0 -> 1.0.1; a version without a trailing number gains '.1'."""
    match = re.search(r"(\d+)$", version)
    if match is None:
        return f"{version}.1"
    return f"{version[:match.start()]}{int(match.group(1)) + 1}"


def store_fit(card: CardRef, fusion: FusionSettings, out: Path | None = None, actor: Any = None) -> CardRef:
    """Save fitted fusion settings as a new, immutable version of the card; the original is untouched.

    For a card folder the new version is a copy of the folder (adapter included) at `out`, by default
    `<folder>-fit`, with the updated manifest; it is written beside the target and renamed into place,
    so a crash never leaves a half-written card. An existing target is refused, never overwritten.
    """
    # wired at merge: for a registry card, `registry.update_manifest(name, new_manifest, actor)` (the
    # registry assigns the version) and return CardRef(ref.manifest, ref.path).
    manifest = card.manifest.model_copy(update={"version": next_version(card.manifest.version), "fusion": fusion})
    manifest = CardManifest.model_validate(manifest.model_dump())
    target = (out or card.folder.with_name(card.folder.name + "-fit")).expanduser().resolve()
    if target.exists():
        raise FileExistsError(f"{target} already exists; pass another --out folder (fitted cards are never "
                              "overwritten)")
    tmp = target.with_name(f".tmp-{target.name}-{uuid.uuid4().hex[:8]}")
    try:
        shutil.copytree(card.folder, tmp, ignore=shutil.ignore_patterns("card.toml", "card.yaml", "card.yml"))
        dump_manifest(manifest, tmp / "card.toml")
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return CardRef(load_manifest(target), target)
