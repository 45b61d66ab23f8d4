"""The card store on disk: `<root>/<name>/<version>/`, one immutable folder per registered version.

Folders appear and disappear only by `rename`, which is atomic within one file system, so a reader
never sees half a card: a new version is copied into `<root>/.staging/` first, validated there and
renamed into place; a deleted one is renamed into `<root>/.trash/` before it is removed. Stored files
are made read-only, since a version must never change after it was validated.
"""
from __future__ import annotations

import os
import shutil
import stat
import time
import uuid
from pathlib import Path

from experts.validation import CardFile

_STALE_SECONDS = 24 * 3600  # staging/trash leftovers of crashed processes older than this are removed


class CardStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.staging = self.root / ".staging"
        self.trash = self.root / ".trash"
        self._swept = False  # nothing is created until the first write: reading leaves the home untouched

    def path(self, name: str, version: str) -> Path:
        return self.root / name / version

    def stage(self, source: Path, files: list[CardFile], rename: dict[str, str] | None = None) -> Path:
        """Copy the listed regular files of `source` into a new staging folder (never following links)."""
        staged = self._new(self.staging)
        try:
            for item in files:
                target = staged / (rename or {}).get(item.relative, item.relative)
                target.parent.mkdir(parents=True, exist_ok=True)
                _copy_regular(source / item.relative, target)
        except BaseException:
            self.discard(staged)
            raise
        return staged

    def stage_clone(self, name: str, version: str) -> Path:
        """A staging copy of a stored version; hard links where possible (stored files never change).

        A caller replacing a file in the copy must unlink it first: writing through a hard link would
        change the stored version too."""
        staged = self._new(self.staging)
        staged.rmdir()
        try:
            shutil.copytree(self.path(name, version), staged, symlinks=True, copy_function=_link_or_copy)
        except BaseException:
            self.discard(staged)
            raise
        return staged

    def publish(self, staged: Path, name: str, version: str) -> Path:
        """Move a validated staging folder into place. The caller holds the database row for
        name@version (uncommitted), so a folder already there is an orphan of a crashed process."""
        for path in staged.rglob("*"):
            if path.is_file():
                path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        target = self.path(name, version)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            self.purge(self._move_to_trash(target))
        os.rename(staged, target)
        return target

    def unpublish(self, name: str, version: str) -> Path | None:
        """Move a stored version to the trash (undo with `restore`, finish with `purge`)."""
        target = self.path(name, version)
        return self._move_to_trash(target) if target.exists() else None

    def restore(self, trashed: Path | None, name: str, version: str) -> None:
        if trashed is not None and trashed.exists():
            target = self.path(name, version)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(trashed, target)

    def purge(self, trashed: Path | None) -> None:
        if trashed is not None:
            shutil.rmtree(trashed, ignore_errors=True)

    def discard(self, staged: Path) -> None:
        shutil.rmtree(staged, ignore_errors=True)

    def remove_if_empty(self, name: str) -> None:
        try:
            (self.root / name).rmdir()
        except OSError:
            pass

    def _move_to_trash(self, target: Path) -> Path:
        self.trash.mkdir(parents=True, exist_ok=True)
        trashed = self.trash / uuid.uuid4().hex
        os.rename(target, trashed)
        return trashed

    def _new(self, parent: Path) -> Path:
        if not self._swept:
            self._sweep()
        folder = parent / uuid.uuid4().hex
        folder.mkdir(parents=True)
        return folder

    def _sweep(self) -> None:
        self._swept = True
        cutoff = time.time() - _STALE_SECONDS
        for parent in (self.staging, self.trash):
            for leftover in (parent.iterdir() if parent.is_dir() else []):
                try:
                    if leftover.stat().st_mtime < cutoff:
                        shutil.rmtree(leftover, ignore_errors=True)
                except OSError:
                    pass


def _copy_regular(source: Path, target: Path) -> None:
    """Copy one file, refusing (not following) a link that replaced it after the scan."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
    descriptor = os.open(source, flags)
    with os.fdopen(descriptor, "rb") as reader:
        if not stat.S_ISREG(os.fstat(reader.fileno()).st_mode):
            raise OSError(f"{source} is not a regular file")
        with open(target, "wb") as writer:
            shutil.copyfileobj(reader, writer, 1024 * 1024)


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
