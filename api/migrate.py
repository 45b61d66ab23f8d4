"""Run the Alembic migrations programmatically, safely when several processes open one database.

`mighty serve --workers N` starts N processes that all open the database at once, so migrating is
serialised: an exclusive file lock beside a SQLite file, a session advisory lock on PostgreSQL. The
loser of the race waits, then finds the schema at head and does nothing.

Databases created before migrations existed (by `create_all`: an `api_keys` table and no
`alembic_version`) are adopted: stamped at the revision that matches them, then upgraded.
"""
from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
ADOPTED_REVISION = "0001"  # the schema `create_all` used to write: the api_keys table alone
_PG_LOCK_KEY = zlib.crc32(b"mighty-migrations")  # any constant shared by all Mighty processes


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision` (adopting a pre-migration database first)."""
    with _migration_lock(engine) as connection:
        config = alembic_config(connection)
        tables = set(inspect(connection).get_table_names())
        if "api_keys" in tables and "alembic_version" not in tables:
            command.stamp(config, ADOPTED_REVISION)
            connection.commit()
        command.upgrade(config, revision)
        connection.commit()


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[Connection]:
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _PG_LOCK_KEY})
            connection.commit()
            try:
                yield connection
            finally:
                connection.rollback()
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _PG_LOCK_KEY})
                connection.commit()
        return
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:":
        with engine.connect() as connection:
            yield connection
        return
    import fcntl

    lock_path = Path(database).with_name(Path(database).name + ".migrate-lock")
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            with engine.connect() as connection:
                yield connection
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
