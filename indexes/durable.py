"""Crash-safe file publication: write aside, fsync, rename, fsync the parent folder.

A rename within one file system is atomic, so a reader sees either the old or the new name, and the
fsyncs order the data before the name on disk; a power cut or SIGKILL at any point leaves at most
an unreferenced temporary folder behind, which the next writer removes.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

FAILPOINT_ENV = "MIGHTY_FAILPOINT"


def failpoint(name: str) -> None:
    """Fault injection for crash tests: SIGKILL this process when MIGHTY_FAILPOINT names this point."""
    if os.environ.get(FAILPOINT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    for child in folder.iterdir():
        if child.is_file():
            fsync_path(child)
    fsync_path(folder)


def publish_folder(temporary: Path, final: Path) -> None:
    """Make a fully written folder visible under its final name."""
    fsync_tree(temporary)
    failpoint(f"before-publish:{final.parent.name}")
    os.rename(temporary, final)
    fsync_path(final.parent)


def atomic_write_text(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    failpoint(f"before-replace:{path.name}")
    os.replace(temporary, path)
    fsync_path(path.parent)
