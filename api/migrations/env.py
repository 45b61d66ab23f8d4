"""Alembic environment: online only, on the connection `api.migrate` hands over (and locks).

A new migration: `python -c "from alembic import command; from api.migrate import alembic_config;
command.revision(alembic_config(), 'what changed')"`, then write its `upgrade()` with `op.create_table`,
`op.add_column`... (never import the models: a migration must describe the schema of its own day).
"""
from __future__ import annotations

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None or context.is_offline_mode():
    raise RuntimeError("Mighty migrations run online through api.migrate.upgrade(engine)")

context.configure(connection=connection, target_metadata=None,
                  render_as_batch=connection.dialect.name == "sqlite")  # SQLite alters tables by copying
with context.begin_transaction():
    context.run_migrations()
