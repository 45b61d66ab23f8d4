"""The SQL database: API keys, the card registry and its audit log, migrated by Alembic on open.

SQLite by default (one file in the home folder), any SQLAlchemy URL (PostgreSQL) by setting. The schema
is owned by the migrations in `api/migrations`, never by `create_all`, so a database written by an
older Mighty is upgraded in place instead of silently missing columns.
"""
from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import DateTime, String, create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker


class Base(DeclarativeBase):
    pass


def utcnow() -> datetime:
    return datetime.now(UTC)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(128))
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


def connect(url: str) -> Engine:
    """An engine without touching the schema (migrations and tests that inspect old databases)."""
    if url.startswith("sqlite:///"):
        from pathlib import Path

        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":
        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(connection, _record):  # WAL: readers never block the single writer
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()
    return engine


def open_database(url: str) -> Engine:
    """An engine on a database migrated to the newest schema (created when missing)."""
    from api.migrate import upgrade

    engine = connect(url)
    upgrade(engine)
    return engine


make_engine = open_database  # the name the service used before migrations existed


def make_sessions(engine: Engine) -> sessionmaker:
    return sessionmaker(engine, expire_on_commit=False)
