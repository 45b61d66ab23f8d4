"""The schema comes from Alembic migrations: fresh databases, adopted old ones, concurrent openers."""
from __future__ import annotations

import subprocess
import sys

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from api.db import Base, connect, make_sessions, open_database
from api.keys import KeyStore
from api.migrate import current_revision, head_revision
from experts.tables import metadata as registry_metadata
from tests.helpers import REPO


def test_a_new_database_is_migrated_to_head_and_matches_the_models(database_url):
    engine = open_database(database_url)
    try:
        with engine.connect() as connection:
            assert current_revision(connection) == head_revision() == "0002"
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, [Base.metadata, registry_metadata]) == []
        open_database(database_url).dispose()  # opening again is a no-op
    finally:
        engine.dispose()


def test_a_database_made_by_create_all_is_adopted_with_its_keys(database_url):
    """Before migrations, the service created `api_keys` with create_all and no alembic_version."""
    old = connect(database_url)
    Base.metadata.create_all(old)
    token, _ = KeyStore(make_sessions(old)).create("early", "team:alpha")
    old.dispose()
    engine = open_database(database_url)
    try:
        assert KeyStore(make_sessions(engine)).verify(token).role == "team:alpha"
        with engine.connect() as connection:
            assert current_revision(connection) == head_revision()
            assert {"cards", "card_versions", "card_activations", "card_audit"} <= set(inspect(connection)
                                                                                          .get_table_names())
    finally:
        engine.dispose()


def test_processes_opening_one_new_database_at_once_all_succeed(database_url):
    """`mighty serve --workers N`: every worker migrates on start; they must not trip over each other."""
    script = "import sys; from api.db import open_database; open_database(sys.argv[1]).dispose(); print('ok')"
    workers = [subprocess.Popen([sys.executable, "-c", script, database_url], cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [worker.communicate(timeout=300) for worker in workers]
    assert [worker.returncode for worker in workers] == [0] * 4, [err for _, err in results]
    engine = connect(database_url)
    try:
        with engine.connect() as connection:
            assert connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == ["0002"]
    finally:
        engine.dispose()
