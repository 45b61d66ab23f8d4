"""API keys: random tokens shown once, stored only as SHA-256 hashes, with roles.

Roles: `admin` (everything), `team:<name>` (write the team's own collections, query), `reader`
(query only). Keys are 256-bit random, so a fast hash is safe: there is nothing to brute-force.
"""
from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from api.db import ApiKey, utcnow

KEY_PREFIX = "mty_"
_ROLE = re.compile(r"^(admin|reader|team:[A-Za-z0-9][A-Za-z0-9_.-]{0,63})$")


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's name and role (or the anonymous admin of --no-auth mode)."""

    name: str
    role: str
    key_id: int | None = None  # None for the anonymous admin of --no-auth mode

    @property
    def identity(self) -> str:
        """What owns the jobs this caller starts: its key (names may repeat, ids do not)."""
        return f"key:{self.key_id}" if self.key_id is not None else f"name:{self.name}"

    @property
    def team(self) -> str | None:
        return self.role.split(":", 1)[1] if self.role.startswith("team:") else None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def can_write(self, owner: str | None) -> bool:
        return self.is_admin or (self.team is not None and self.team == owner)


@dataclass(frozen=True)
class KeyInfo:
    id: int
    name: str
    role: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


def validate_role(role: str) -> str:
    if not _ROLE.match(role):
        raise ValueError(f"invalid role {role!r}: use admin, reader or team:<name>")
    return role


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class KeyStore:
    def __init__(self, sessions: sessionmaker) -> None:
        self._sessions = sessions

    def create(self, name: str, role: str) -> tuple[str, KeyInfo]:
        """Returns the token (shown once) and its stored record."""
        validate_role(role)
        token = KEY_PREFIX + secrets.token_urlsafe(32)
        with self._sessions.begin() as session:
            record = ApiKey(name=name, role=role, prefix=token[:10], key_hash=_hash(token))
            session.add(record)
            session.flush()
            return token, _info(record)

    def verify(self, token: str) -> Principal | None:
        with self._sessions() as session:
            record = session.scalar(select(ApiKey).where(ApiKey.key_hash == _hash(token)))
            if record is None or record.revoked_at is not None:
                return None
            return Principal(record.name, record.role, record.id)

    def list(self) -> list[KeyInfo]:
        with self._sessions() as session:
            return [_info(r) for r in session.scalars(select(ApiKey).order_by(ApiKey.id))]

    def revoke(self, key_id: int) -> bool:
        with self._sessions.begin() as session:
            record = session.get(ApiKey, key_id)
            if record is None or record.revoked_at is not None:
                return False
            record.revoked_at = utcnow()
            return True


def _info(record: ApiKey) -> KeyInfo:
    return KeyInfo(record.id, record.name, record.role, record.prefix, record.created_at, record.revoked_at)
