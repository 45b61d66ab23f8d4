"""A throwaway PostgreSQL server for the test session (or the one named by MIGHTY_TEST_POSTGRES_URL).

The registry must work on PostgreSQL for real, so tests never skip it: when no server can be found or
started, the fixture fails with what to install. As root (CI containers) the server runs as the
`postgres` OS user, since PostgreSQL refuses to run as root.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

INSTALL_HINT = ("install PostgreSQL (Debian: apt-get install -y postgresql) or set MIGHTY_TEST_POSTGRES_URL "
                "to a server where the URL's user may CREATE DATABASE")


class PostgresUnavailable(RuntimeError):
    pass


def _tool(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if not found:
        raise PostgresUnavailable(f"{name} not found on PATH or in /usr/lib/postgresql/*/bin: {INSTALL_HINT}")
    return found


class PostgresServer:
    """Owns a server in a temp folder (started here), or just hands out databases on an external one."""

    def __init__(self, url: str | None = None) -> None:
        self._folder: Path | None = None
        self._as_user: list[str] = []
        self._admin = None
        try:
            self.url = url or self._start()
        except BaseException:
            self.stop()
            raise
        self._admin = create_engine(self.url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
        try:
            with self._admin.connect() as connection:
                connection.execute(text("SELECT 1"))
        except Exception as error:
            self.stop()
            raise PostgresUnavailable(f"cannot connect to PostgreSQL at {self.url}: {error}; {INSTALL_HINT}") from error

    def _start(self) -> str:
        initdb, pg_ctl = _tool("initdb"), _tool("pg_ctl")
        from tests.helpers import free_port

        self._folder = Path(tempfile.mkdtemp(prefix="mighty-pg-"))
        if os.geteuid() == 0:
            runuser = shutil.which("runuser")
            if runuser is None:
                raise PostgresUnavailable("running as root but runuser is missing: cannot start PostgreSQL as postgres")
            self._as_user = [runuser, "-u", "postgres", "--"]
            os.chmod(self._folder, 0o755)
            shutil.chown(self._folder, "postgres")
        data, log, port = self._folder / "data", self._folder / "server.log", free_port()
        self._run([initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
        options = f"-p {port} -k {self._folder} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
        self._run([pg_ctl, "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start"],
                  log=log)
        return f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"

    def _run(self, command: list[str], log: Path | None = None) -> None:
        done = subprocess.run(self._as_user + command, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise PostgresUnavailable(f"{' '.join(command[:1])} failed ({done.returncode}): "
                                      f"{done.stderr.strip() or done.stdout.strip()} {tail}; {INSTALL_HINT}")

    def new_database(self) -> str:
        """A fresh, empty database: tests stay independent without sharing schemas."""
        name = f"mighty_test_{uuid.uuid4().hex[:12]}"
        with self._admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        return make_url(self.url).set(database=name).render_as_string(hide_password=False)

    def drop_database(self, url: str) -> None:
        name = make_url(url).database
        with self._admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    def stop(self) -> None:
        if self._admin is not None:
            self._admin.dispose()
        if self._folder is not None:
            subprocess.run(self._as_user + [_tool("pg_ctl"), "-D", str(self._folder / "data"), "-m", "immediate",
                                            "stop"], capture_output=True, timeout=60)
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None
