"""Opening the card registry of a home folder, and who acts on it (CLI operator or API key).

Used by the CLI (`mighty cards ...`, `mighty cards train`) and by the server's state, so both see
the same database (`ServiceSettings.resolved_database_url()`) and the same store (`<home>/cards`).
"""
from __future__ import annotations

import getpass
import os
from pathlib import Path

from api.keys import Principal
from api.settings import ServiceSettings
from experts.registry import Actor, CardRegistry


def open_registry(home: Path | str | None = None, settings: ServiceSettings | None = None) -> CardRegistry:
    """The registry of `home` (a path or an `indexes.collection.Home`; default: the settings' home)."""
    from api.db import open_database

    root = home if home is None or isinstance(home, (str, Path)) else home.root  # (a Path's .root is "/")
    settings = settings or (ServiceSettings(home=Path(root)) if root is not None else ServiceSettings())
    return CardRegistry(open_database(settings.resolved_database_url()), settings.cards_dir)


def operator_actor() -> Actor:
    """The CLI acts as the local operator: an admin (whoever runs the CLI can edit the home folder and its
    database anyway), named after the OS user so the audit log says who it was."""
    name = os.environ.get("USER")
    if not name:
        try:
            name = getpass.getuser()
        except (KeyError, OSError):
            name = "operator"
    return Actor(name=name, team=None, is_admin=True)


def actor_for(principal: Principal) -> Actor:
    """An API key's identity as the registry sees it (readers get no team and no admin rights)."""
    return Actor(name=principal.name, team=principal.team, is_admin=principal.is_admin)
