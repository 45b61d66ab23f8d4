"""Where fusion meets the card store: finding a card, and saving fitted weights as a new version.

A card is named by a folder path (card.toml plus its adapter) or, when a registry is in use, by
`name` (its active version) or `name@version`. A registered card's fitted weights become a new
registry version; a folder card's become a new folder beside it.
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
    registered: bool = False

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


_registry: Any = None


def use_registry(registry: Any) -> None:
    """The registry that card names resolve in (set by the service and by the CLI)."""
    global _registry
    _registry = registry


def resolve_card(name_or_path: str, registry: Any = None, allow_paths: bool = True) -> CardRef:
    """A card by folder (or manifest file) path, else by registered `name` or `name@version`.

    The service passes allow_paths=False: a client must not make the server read arbitrary folders."""
    path = Path(name_or_path).expanduser()
    if allow_paths and path.exists():
        manifest = load_manifest(path)  # ManifestError names the file and line
        ref = CardRef(manifest, (path if path.is_dir() else path.parent).resolve())
    else:
        registry = registry or _registry
        if registry is None:
            raise CardNotFound(f"no card {name_or_path!r}: give the path of a card folder (holding card.toml) "
                               "or the name of a registered card")
        from experts.errors import CardError

        name, _, version = name_or_path.partition("@")
        try:
            stored = registry.get(name, version or None)
        except CardError as error:
            hint = "; or give the path of a card folder (holding card.toml)" if allow_paths else ""
            raise CardNotFound(f"no card {name_or_path!r}: {error}{hint}") from None
        ref = CardRef(stored.manifest, stored.path, registered=True)
    if "fusion" not in ref.manifest.kind:
        raise ManifestError(f"card {ref.label} ({ref.folder}) is not a fusion card (kind = {ref.manifest.kind}); "
                            "train one with `mighty cards train ... --kind fusion` (or both)")
    return ref


def next_version(version: str) -> str:
    """1.0.0 -> 1.0.1; a version without a trailing number gains '.1'."""
    match = re.search(r"(\d+)$", version)
    if match is None:
        return f"{version}.1"
    return f"{version[:match.start()]}{int(match.group(1)) + 1}"


def store_fit(card: CardRef, fusion: FusionSettings, out: Path | None = None, actor: Any = None,
              registry: Any = None) -> CardRef:
    """Save fitted fusion settings as a new, immutable version of the card; the original is untouched.

    For a card folder the new version is a copy of the folder (adapter included) at `out`, by default
    `<folder>-fit`, with the updated manifest; it is written beside the target and renamed into place,
    so a crash never leaves a half-written card. An existing target is refused, never overwritten.
    """
    registry = registry or _registry
    if card.registered and out is None and registry is not None:
        taken = {ref.version for ref in registry.versions(card.manifest.name)}
        version = next_version(card.manifest.version)
        while version in taken:
            version = next_version(version)
        manifest = card.manifest.model_copy(update={"version": version, "fusion": fusion})
        stored = registry.update_manifest(card.manifest.name, CardManifest.model_validate(manifest.model_dump()),
                                          actor)
        return CardRef(stored.manifest, stored.path, registered=True)
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
