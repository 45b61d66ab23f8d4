"""Helpers for tests that drive the real `mighty` command."""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_mighty(home: Path, *args: str, stdin: str | None = None, env: dict | None = None,
               timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `mighty` in a fresh interpreter, exactly as a user would."""
    environment = {**os.environ, "MIGHTY_HOME": str(home), "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    environment.update(env or {})
    return subprocess.run([sys.executable, "-m", "api.cli.main", *args], input=stdin, capture_output=True,
                          text=True, cwd=REPO, env=environment, timeout=timeout)


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(args: list[str], port: int, env: dict, log: Path, timeout: float) -> subprocess.Popen:
    """Start `mighty ARGS` (a command that serves on `port`), wait for /healthz, return the process.

    Output goes to a file, never an unread pipe that could fill and stall the server."""
    import time

    import httpx

    handle = open(log, "w")
    process = subprocess.Popen([sys.executable, "-m", "api.cli.main", *args], cwd=REPO, env=env,
                               stdout=handle, stderr=subprocess.STDOUT, text=True)
    handle.close()
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.5)
    process.kill()
    raise AssertionError(f"server did not answer /healthz within {timeout:.0f} s:\n{log.read_text()}")


@contextmanager
def serving(home: Path, *flags: str, timeout: float = 240, env: dict | None = None) -> Iterator[tuple[str, int, Path]]:
    """`mighty serve FLAGS` on `home` at a free loopback port (with `env` added to the environment):
    yields (base URL, port, log file) and stops the server afterwards."""
    port = free_port()
    env = {**os.environ, "MIGHTY_HOME": str(home), "HF_HUB_OFFLINE": "1", **(env or {})}
    log = home.parent / "server.log"
    process = start_server(["serve", "--port", str(port), *flags], port, env, log, timeout)
    try:
        yield f"http://127.0.0.1:{port}", port, log
    finally:
        process.terminate()
        process.wait(timeout=30)
