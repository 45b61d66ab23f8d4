"""The registry's SQL tables (SQLAlchemy Core), independent of the service package.

The schema itself is created by the Alembic migrations in `api/migrations`; these definitions must
match them (a test compares the two on SQLite and PostgreSQL).

- `cards`: one row per card name: its owning team and the active version (NULL when none).
- `card_versions`: one immutable row per registered version, with the validated manifest as JSON.
- `card_activations`: the activation history, a stack that `rollback` pops.
- `card_audit`: who did what to which card, kept after a card is deleted.
"""
from __future__ import annotations

from sqlalchemy import (JSON, BigInteger, Boolean, Column, DateTime, ForeignKey, Index, Integer, MetaData, String,
                        Table, UniqueConstraint)

metadata = MetaData()

cards = Table(
    "cards", metadata,
    Column("name", String(64), primary_key=True),
    Column("owner", String(64), nullable=False),
    Column("active_version", String(32), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

card_versions = Table(
    "card_versions", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("card", String(64), ForeignKey("cards.name", ondelete="CASCADE"), nullable=False),
    Column("version", String(32), nullable=False),
    Column("manifest", JSON, nullable=False),
    Column("manifest_file", String(32), nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("file_count", Integer, nullable=False),
    Column("registered_at", DateTime(timezone=True), nullable=False),
    Column("registered_by", String(128), nullable=False),
    UniqueConstraint("card", "version", name="uq_card_versions_card_version"),
)

card_activations = Table(
    "card_activations", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("card", String(64), ForeignKey("cards.name", ondelete="CASCADE"), nullable=False),
    Column("version", String(32), nullable=False),
    Column("activated_at", DateTime(timezone=True), nullable=False),
    Column("activated_by", String(128), nullable=False),
    Column("undone", Boolean, nullable=False, default=False),
    Index("ix_card_activations_card", "card"),
)

card_audit = Table(
    "card_audit", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("actor", String(128), nullable=False),
    Column("role", String(128), nullable=False),
    Column("action", String(16), nullable=False),
    Column("card", String(64), nullable=False),
    Column("version", String(32), nullable=True),
    Column("details", JSON, nullable=False),
    Index("ix_card_audit_card", "card"),
)
