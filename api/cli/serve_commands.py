"""`mighty serve` and `mighty keys ...`."""
from __future__ import annotations

import ipaddress
import os

import typer
from rich.table import Table

from api.cli.context import err, fail, home_from, out

keys_app = typer.Typer(help="Manage API keys (stored hashed in the SQL database).", no_args_is_help=True)


def _settings(ctx: typer.Context, **overrides):
    from api.settings import ServiceSettings

    return ServiceSettings(home=home_from(ctx).root, **{k: v for k, v in overrides.items() if v is not None})


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(ctx: typer.Context, host: str = typer.Option("127.0.0.1"), port: int = typer.Option(8000),
          no_auth: bool = typer.Option(None, "--no-auth/--auth",
                                       help="Skip API keys (default: on for loopback, off otherwise)."),
          llm: str = typer.Option(None, help="Default LiteLLM model string for answers."),
          workers: int = typer.Option(1, help="uvicorn worker processes.")) -> None:
    """Start the REST service (OpenAPI docs at /docs)."""
    import uvicorn

    from api.app import create_app

    if no_auth is None:
        no_auth = _is_loopback(host)
    if no_auth and not _is_loopback(host):
        raise fail(f"--no-auth is only allowed on loopback, not on {host}; create a key with `mighty keys create`")
    settings = _settings(ctx, no_auth=no_auth, default_llm=llm)
    err.print(f"Mighty on http://{host}:{port} (docs at /docs; auth {'off' if no_auth else 'on'}; "
              f"home {settings.home})")
    if workers < 2:
        uvicorn.run(create_app(settings), host=host, port=port, log_level="warning")
        return
    # Worker processes import the app themselves: hand them the settings through the environment,
    # and split the cores between them instead of letting each embedder claim all of them.
    os.environ.update({"MIGHTY_HOME": str(settings.home), "MIGHTY_NO_AUTH": str(no_auth).lower(),
                       "MIGHTY_DEFAULT_LLM": settings.default_llm})
    os.environ.setdefault("MIGHTY_EMBED_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    uvicorn.run("api.app:create_app", factory=True, host=host, port=port, workers=workers, log_level="warning")


@keys_app.command("create")
def create(ctx: typer.Context, name: str = typer.Argument(...),
           role: str = typer.Option("reader", help="admin | reader | team:<name>")) -> None:
    from api.db import make_sessions, open_database
    from api.keys import KeyStore

    store = KeyStore(make_sessions(open_database(_settings(ctx).resolved_database_url())))
    try:
        token, info = store.create(name, role)
    except ValueError as exc:
        raise fail(str(exc)) from None
    err.print(f"key {info.id} ({info.name}, {info.role}) created; it is shown once:")
    print(token)


@keys_app.command("list")
def list_keys(ctx: typer.Context) -> None:
    from api.db import make_sessions, open_database
    from api.keys import KeyStore

    store = KeyStore(make_sessions(open_database(_settings(ctx).resolved_database_url())))
    table = Table("id", "name", "role", "prefix", "created", "revoked")
    for key in store.list():
        table.add_row(str(key.id), key.name, key.role, key.prefix, f"{key.created_at:%Y-%m-%d %H:%M}",
                      f"{key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "")
    out.print(table)


@keys_app.command("revoke")
def revoke(ctx: typer.Context, key_id: int = typer.Argument(...)) -> None:
    from api.db import make_sessions, open_database
    from api.keys import KeyStore

    store = KeyStore(make_sessions(open_database(_settings(ctx).resolved_database_url())))
    if not store.revoke(key_id):
        raise fail(f"no active key with id {key_id} (see `mighty keys list`)", code=1)
    out.print(f"key {key_id} revoked")
