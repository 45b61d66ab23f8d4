"""`mighty cards ...`: register, list, show, activate, roll back, delete and audit expert cards.

The CLI acts as the local operator: an admin named after $USER (see `api.card_registry.operator_actor`).
Every refusal exits with status 1 and says why (manifest errors name the file and line).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape
from rich.table import Table

from api.cli.context import EXIT_REJECTED, err, fail, home_from, out
from experts.errors import CardError

if TYPE_CHECKING:
    from experts.registry import AuditEntry, CardRef, CardRegistry

app = typer.Typer(help="Expert cards: small LoRA models registered by domain teams.", no_args_is_help=True)


def __getattr__(name: str) -> Any:
    """`open_registry` and `operator_actor` re-exported lazily: SQLAlchemy loads only when a card
    command runs, not on every `mighty` start."""
    if name in ("open_registry", "operator_actor"):
        import api.card_registry

        return getattr(api.card_registry, name)
    raise AttributeError(name)


def _registry(ctx: typer.Context) -> CardRegistry:
    from api.card_registry import open_registry

    try:
        return open_registry(home_from(ctx))
    except CardError as error:
        raise _refused(error) from None


def _operator():
    from api.card_registry import operator_actor

    return operator_actor()


def _refused(error: Exception) -> typer.Exit:
    return fail(escape(str(error)), code=EXIT_REJECTED)


def card_json(ref: CardRef) -> dict[str, Any]:
    return {"name": ref.name, "version": ref.version, "active": ref.active, "owner": ref.manifest.owner,
            "registered_at": ref.registered_at.isoformat(), "registered_by": ref.registered_by,
            "path": str(ref.path), "manifest": ref.manifest.model_dump(mode="json", exclude_none=True)}


def audit_json(entry: AuditEntry) -> dict[str, Any]:
    return {"id": entry.id, "at": entry.at.isoformat(), "actor": entry.actor, "role": entry.role,
            "action": entry.action, "card": entry.card, "version": entry.version, "details": entry.details}


@app.command()
def register(ctx: typer.Context,
             path: Path = typer.Argument(..., help="A card folder, or its manifest (card.toml / card.yaml)."),
             activate: bool = typer.Option(None, "--activate/--no-activate",
                                           help="Make it the active version (default: only if none is active).")
             ) -> None:
    """Validate a card (files, weights, loading on its base) and store it as a new immutable version."""
    registry = _registry(ctx)
    with err.status(f"validating {escape(str(path))}: checking files, loading on the base, generating"):
        try:
            ref = registry.register(path, _operator(), activate=activate)
        except CardError as error:
            raise _refused(error) from None
    state = "active" if ref.active else f"inactive; activate with: mighty cards activate {ref.name} {ref.version}"
    out.print(f"registered {ref.name}@{ref.version} ({state}) in {ref.path}", highlight=False)


@app.command("list")
def list_cards(ctx: typer.Context,
               include_all: bool = typer.Option(False, "--all", help="Every version, not only the active ones."),
               as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Registered cards (their active versions)."""
    refs = _registry(ctx).list(include_inactive=include_all)
    if as_json:
        print(json.dumps([card_json(ref) for ref in refs], indent=2))
        return
    if not refs:
        err.print("no cards registered yet; add one with: mighty cards register PATH")
        return
    table = Table("name", "version", "active", "owner", "domain", "kind", "registered")
    for ref in refs:
        table.add_row(ref.name, ref.version, "yes" if ref.active else "", ref.manifest.owner, ref.manifest.domain,
                      ",".join(ref.manifest.kind), f"{ref.registered_at:%Y-%m-%d %H:%M} by {escape(ref.registered_by)}")
    out.print(table)


@app.command()
def show(ctx: typer.Context, name: str = typer.Argument(...),
         as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """A card: its owner, active version and every version."""
    try:
        summary = _registry(ctx).summary(name)
    except CardError as error:
        raise _refused(error) from None
    if as_json:
        print(json.dumps({"name": summary.name, "owner": summary.owner, "active_version": summary.active_version,
                          "versions": [card_json(ref) for ref in summary.versions]}, indent=2))
        return
    active = next((ref for ref in summary.versions if ref.active), None)
    out.print(f"[bold]{escape(name)}[/] owned by {escape(summary.owner)}; active version: "
              f"{escape(summary.active_version or 'none')}")
    if active is not None:
        manifest = active.manifest
        out.print(f"{escape(manifest.domain)}: {escape(manifest.description)}\nbase {escape(manifest.model.base)}, "
                  f"{'adapter' if manifest.model.adapter else 'full model'} at {active.artifact}", highlight=False)
    table = Table("version", "active", "registered", "by")
    for ref in summary.versions:
        table.add_row(ref.version, "yes" if ref.active else "", f"{ref.registered_at:%Y-%m-%d %H:%M:%S}",
                      escape(ref.registered_by))
    out.print(table)


@app.command()
def activate(ctx: typer.Context, name: str = typer.Argument(...), version: str = typer.Argument(...)) -> None:
    """Make VERSION the card's active version."""
    try:
        ref = _registry(ctx).activate(name, version, _operator())
    except CardError as error:
        raise _refused(error) from None
    out.print(f"{ref.name}@{ref.version} is active", highlight=False)


@app.command()
def rollback(ctx: typer.Context, name: str = typer.Argument(...)) -> None:
    """Re-activate the version that was active before the current one."""
    try:
        ref = _registry(ctx).rollback(name, _operator())
    except CardError as error:
        raise _refused(error) from None
    out.print(f"rolled back: {ref.name}@{ref.version} is active", highlight=False)


@app.command()
def delete(ctx: typer.Context, name: str = typer.Argument(...),
           version: str = typer.Option(None, "--version", help="Delete one inactive version only."),
           yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation.")) -> None:
    """Delete a card (every version and its files), or one inactive version."""
    what = f"{name}@{version}" if version else f"card {name} with all its versions"
    if not yes:
        if not sys.stdin.isatty():
            raise fail(f"refusing to delete {what} without confirmation; pass --yes", code=EXIT_REJECTED)
        typer.confirm(f"Delete {what}?", abort=True)
    try:
        deleted = _registry(ctx).delete(name, _operator(), version=version)
    except CardError as error:
        raise _refused(error) from None
    out.print(f"deleted {name}: {', '.join(deleted)}", highlight=False)


@app.command()
def audit(ctx: typer.Context, name: str = typer.Argument(None, help="Only this card."),
          limit: int = typer.Option(100, min=1, help="Newest entries shown."),
          as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Who registered, activated, rolled back or deleted what, newest first."""
    entries = _registry(ctx).audit(name, limit=limit)
    if as_json:
        print(json.dumps([audit_json(entry) for entry in entries], indent=2))
        return
    table = Table("when", "who", "role", "action", "card", "version", "details")
    for entry in entries:
        details = {k: v for k, v in entry.details.items() if k not in ("sample", "source")}
        table.add_row(f"{entry.at:%Y-%m-%d %H:%M:%S}", escape(entry.actor), entry.role, entry.action, entry.card,
                      entry.version or "", escape(json.dumps(details)))
    out.print(table)
