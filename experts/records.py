"""What the registry hands out: who acts (`Actor`), stored versions (`CardRef`) and audit entries."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from experts.manifest import CardManifest


@dataclass(frozen=True)
class Actor:
    """Who changes the registry. A team may only touch cards its team owns; admins may touch all."""

    name: str
    team: str | None = None
    is_admin: bool = False

    def can_write(self, owner: str | None) -> bool:
        return self.is_admin or (self.team is not None and self.team == owner)

    @property
    def role(self) -> str:
        """The role as the audit log and the API keys spell it: admin, team:<name> or reader."""
        if self.is_admin:
            return "admin"
        return f"team:{self.team}" if self.team else "reader"


@dataclass
class CardRef:
    """One stored version. `path` is its immutable folder: the manifest and the artifacts."""

    manifest: CardManifest
    path: Path
    active: bool
    registered_at: datetime
    registered_by: str

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def artifact(self) -> Path:
        """The adapter folder (or full model folder) inside the stored card."""
        return self.path / self.manifest.model.artifact


@dataclass
class CardSummary:
    """A card across its versions: the owner, the active version (None when none is) and every version."""

    name: str
    owner: str
    active_version: str | None
    versions: list[CardRef] = field(default_factory=list)


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    role: str
    action: str  # register | update | activate | rollback | delete
    card: str
    version: str | None
    details: dict[str, Any]


def aware(moment: datetime) -> datetime:
    """SQLite returns naive datetimes; everything stored is UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)
