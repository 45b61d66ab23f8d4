"""Helpers for tests that drive the real `mighty` command."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_mighty(home: Path, *args: str, stdin: str | None = None, env: dict | None = None,
               timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `mighty` in a fresh interpreter, exactly as a user would."""
    environment = {**os.environ, "MIGHTY_HOME": str(home), "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    environment.update(env or {})
    return subprocess.run([sys.executable, "-m", "api.cli.main", *args], input=stdin, capture_output=True,
                          text=True, cwd=REPO, env=environment, timeout=timeout)
