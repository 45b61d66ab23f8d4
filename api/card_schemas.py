"""Response and request bodies of the card endpoints (`/v1/cards`)."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from experts.records import AuditEntry, CardRef, CardSummary


class CardVersionOut(BaseModel):
    name: str
    version: str
    active: bool
    owner: str
    domain: str
    description: str
    kind: list[str]
    ref: str = Field(description="how answers cite the card: card:name@version")
    registered_at: datetime
    registered_by: str
    manifest: dict[str, Any]

    @classmethod
    def of(cls, ref: CardRef) -> "CardVersionOut":
        manifest = ref.manifest
        return cls(name=ref.name, version=ref.version, active=ref.active, owner=manifest.owner,
                   domain=manifest.domain, description=manifest.description, kind=list(manifest.kind),
                   ref=manifest.ref, registered_at=ref.registered_at, registered_by=ref.registered_by,
                   manifest=manifest.model_dump(mode="json", exclude_none=True))


class CardOut(BaseModel):
    name: str
    owner: str
    active_version: str | None
    versions: list[CardVersionOut]

    @classmethod
    def of(cls, summary: CardSummary) -> "CardOut":
        return cls(name=summary.name, owner=summary.owner, active_version=summary.active_version,
                   versions=[CardVersionOut.of(ref) for ref in summary.versions])


class ActivateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(min_length=1, max_length=32)


class AuditOut(BaseModel):
    id: int
    at: datetime
    actor: str
    role: str
    action: str
    card: str
    version: str | None
    details: dict[str, Any]

    @classmethod
    def of(cls, entry: AuditEntry) -> "AuditOut":
        return cls(id=entry.id, at=entry.at, actor=entry.actor, role=entry.role, action=entry.action,
                   card=entry.card, version=entry.version, details=entry.details)


class DeletedOut(BaseModel):
    name: str
    deleted: list[str] = Field(description="the versions removed")
