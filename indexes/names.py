"""The one rule for collection names, and the one place a name becomes a folder.

A collection name reaches Mighty from the CLI, REST bodies, REST paths, the LangChain adapter and card
manifests; every one of those ends in `Home.open/create/delete`, which call `collection_folder`. The
pattern is deliberately narrow: lowercase ASCII letters, digits, `_` and `-`, 1-64 characters,
starting with a letter or digit. So a name can never be a path (`/`, `..`, `.`), there is exactly one
spelling per collection (no `tiny/./.` aliases, no case variants that alias on case-insensitive file
systems), and one collection is one cache entry.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator

COLLECTION_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
_NAME = re.compile(COLLECTION_NAME_PATTERN)
NAME_RULE = "1-64 lowercase letters, digits, '_' or '-', starting with a letter or digit"


class InvalidCollectionName(ValueError):
    """A name outside the rule; the message gives the rule (never whether anything exists)."""


def check_collection_name(name: object) -> str:
    """The name unchanged when it follows the rule, else `InvalidCollectionName` saying why."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        shown = repr(name if len(name) <= 80 else name[:80] + "...") if isinstance(name, str) else type(name).__name__
        raise InvalidCollectionName(f"invalid collection name {shown}: use {NAME_RULE}")
    return name


def collection_folder(collections_dir: Path, name: str) -> Path:
    """`collections_dir/name` after checking the name, and (defence in depth) that the resolved folder
    is still directly inside the resolved collections folder (a symlinked collection folder is refused)."""
    check_collection_name(name)
    folder = collections_dir / name
    root = collections_dir.resolve()
    if folder.resolve().parent != root:
        raise InvalidCollectionName(f"collection {name!r} does not resolve inside this home's collections folder")
    return folder


#: a pydantic field type for request bodies and manifests: the same rule, as a schema-level validator
CollectionName = Annotated[str, AfterValidator(check_collection_name)]
