"""Alembic migrations of Mighty's SQL schema (run by `api.migrate.upgrade` whenever a database opens)."""
