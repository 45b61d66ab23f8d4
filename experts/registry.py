"""The expert-card registry: immutable versions, one active version per card, ownership, audit.

Rows live in SQL (SQLite or PostgreSQL, schema by the Alembic migrations); each version's files live
in `cards_root/<name>/<version>/` (see `experts.card_store`). A register copies the card into a
staging folder, validates the copy (the files checked are the files stored), then inserts its rows
and renames the folder into place inside one transaction: any failure leaves both unchanged.

Writes to one card are serialised (SQLite: BEGIN IMMEDIATE; PostgreSQL: a transaction advisory lock
per card name), so concurrent activations or registrations from several workers cannot interleave.
The slow part of a register (copy, model load) runs before that transaction, not inside it.
"""
from __future__ import annotations

import hashlib
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import delete, insert, inspect, select, text, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from experts.card_store import CardStore
from experts.errors import CardConflict, CardError, CardForbidden, CardNotFound, CardValidationError
from experts.manifest import MANIFEST_NAMES, CardManifest, ManifestError, dump_manifest, find_manifest, load_manifest
from experts.records import Actor, AuditEntry, CardRef, CardSummary, aware, utcnow
from experts.tables import card_activations, card_audit, card_versions, cards
from experts.validation import CardLimits, LoadReport, StaticReport, check_loads, check_static, scan

__all__ = ["Actor", "AuditEntry", "CardConflict", "CardError", "CardForbidden", "CardNotFound", "CardRef",
           "CardRegistry", "CardSummary", "CardValidationError"]

_LOCK_NAMESPACE = 0x4D43  # first key of the per-card PostgreSQL advisory locks ("MC")
_VERIFIED: dict[str, LoadReport] = {}  # load checks passed in this process, by content digest
_VERIFIED_LOCK = threading.Lock()


class CardRegistry:
    def __init__(self, engine: Engine, cards_root: Path, limits: CardLimits | None = None) -> None:
        if not inspect(engine).has_table("card_versions"):
            raise CardError("the database has no registry tables; open it with api.db.open_database, which runs "
                            "the migrations")
        self._engine = engine
        self.store = CardStore(Path(cards_root))
        self.limits = limits or CardLimits()

    # ---- reading -------------------------------------------------------------------------------

    def list(self, include_inactive: bool = False) -> list[CardRef]:
        """Active versions, one per card; with `include_inactive`, every version of every card."""
        query = _versions_query()
        if not include_inactive:
            query = query.where(cards.c.active_version == card_versions.c.version)
        with self._engine.connect() as connection:
            return [self._ref(row) for row in connection.execute(query.order_by(cards.c.name, card_versions.c.id))]

    def active_cards(self) -> list[CardRef]:
        return self.list()

    def versions(self, name: str) -> list[CardRef]:
        return self.summary(name).versions

    def summary(self, name: str) -> CardSummary:
        with self._engine.connect() as connection:
            card = _card_row(connection, name)
            rows = connection.execute(_versions_query().where(card_versions.c.card == name)
                                      .order_by(card_versions.c.id))
            return CardSummary(name, card.owner, card.active_version, [self._ref(row) for row in rows])

    def get(self, name: str, version: str | None = None) -> CardRef:
        """A version of a card, or its active version when `version` is None."""
        with self._engine.connect() as connection:
            card = _card_row(connection, name)
            if version is None and card.active_version is None:
                raise CardNotFound(f"card {name!r} has no active version; activate one "
                                   f"(mighty cards activate {name} VERSION)")
            wanted = version if version is not None else card.active_version
            row = connection.execute(_versions_query().where(card_versions.c.card == name,
                                                             card_versions.c.version == wanted)).first()
        if row is None:
            raise CardNotFound(f"card {name!r} has no version {wanted!r} (see mighty cards show {name})")
        return self._ref(row)

    def audit(self, name: str | None = None, limit: int = 100) -> list[AuditEntry]:
        """Newest first."""
        query = select(card_audit).order_by(card_audit.c.id.desc()).limit(limit)
        if name is not None:
            query = query.where(card_audit.c.card == name)
        with self._engine.connect() as connection:
            return [AuditEntry(row.id, aware(row.at), row.actor, row.role, row.action, row.card, row.version,
                               row.details or {}) for row in connection.execute(query)]

    # ---- changing ------------------------------------------------------------------------------

    def register(self, source: Path, actor: Actor, activate: bool | None = None, *,
                 origin: str | None = None) -> CardRef:
        """Validate and store a card folder (or the folder of a manifest file) as a new version.

        The first version of a card (or one registered while none is active) becomes active unless
        `activate=False`; later versions only with `activate=True`. `origin` is what the audit log
        records as the source (default: the path; the REST upload says "upload")."""
        source = Path(source)
        if source.is_dir() and sum((source / name).is_file() for name in MANIFEST_NAMES) > 1:
            raise CardValidationError(f"{source}: the folder has several manifests ({', '.join(MANIFEST_NAMES)}); "
                                      "keep one, or register the manifest file you mean")
        try:
            manifest_path = find_manifest(source)
            manifest = load_manifest(manifest_path)
        except ManifestError as error:
            raise CardValidationError(f"{error}; fix the manifest and register again") from None
        self._precheck(manifest, actor)
        folder = manifest_path.parent
        chosen = "card.yaml" if manifest_path.suffix in (".yaml", ".yml") else "card.toml"
        files = [f for f in scan(folder, self.limits)
                 if f.relative == manifest_path.name or f.relative not in MANIFEST_NAMES]
        staged = self.store.stage(folder, files, rename={manifest_path.name: chosen})
        try:
            static = check_static(staged, self.limits, source_name=str(manifest_path))
            report = self._check_loads(staged, static)
            return self._insert(staged, static, actor, activate, "register",
                                {"source": origin or str(source), "sample": report.sample})
        finally:
            self.store.discard(staged)

    def update_manifest(self, name: str, new_manifest: CardManifest, actor: Actor,
                        activate: bool = True) -> CardRef:
        """Store a new version that copies the active version's files with a changed manifest.

        Versions are immutable, so this is how `mighty fusion fit` records fitted weights. The load
        check is repeated only when the model section changed."""
        current = self.get(name)
        with self._engine.connect() as connection:
            _require_write(_card_row(connection, name), actor, "update")
        if new_manifest.name != name:
            raise CardValidationError(f"name: the new manifest is for {new_manifest.name!r}, not {name!r}")
        self._precheck(new_manifest, actor)
        staged = self.store.stage_clone(name, current.version)
        try:
            for manifest_name in MANIFEST_NAMES:
                (staged / manifest_name).unlink(missing_ok=True)  # hard links: never write through them
            dump_manifest(new_manifest, staged / "card.toml")
            static = check_static(staged, self.limits, source_name=f"{name}@{new_manifest.version} card.toml")
            if static.manifest.model != current.manifest.model:
                self._check_loads(staged, static)
            return self._insert(staged, static, actor, activate, "update", {"from_version": current.version})
        finally:
            self.store.discard(staged)

    def activate(self, name: str, version: str, actor: Actor) -> CardRef:
        with self._writing(name) as connection:
            card = _card_row(connection, name)
            _require_write(card, actor, "activate")
            if connection.execute(select(card_versions.c.id).where(card_versions.c.card == name,
                                                                   card_versions.c.version == version)).first() is None:
                raise CardNotFound(f"card {name!r} has no version {version!r} (see mighty cards show {name})")
            if card.active_version != version:
                self._set_active(connection, name, version, actor)
                _audit(connection, actor, "activate", name, version, {"previous": card.active_version})
        return self.get(name, version)

    def rollback(self, name: str, actor: Actor) -> CardRef:
        """Re-activate the version that was active before the current one (repeatable, like undo)."""
        with self._writing(name) as connection:
            card = _card_row(connection, name)
            _require_write(card, actor, "roll back")
            current = card.active_version
            if current is None:
                raise CardConflict(f"card {name!r} has no active version to roll back from")
            stored = set(connection.execute(select(card_versions.c.version).where(card_versions.c.card == name))
                         .scalars())
            history = connection.execute(select(card_activations).where(card_activations.c.card == name,
                                                                        ~card_activations.c.undone)
                                         .order_by(card_activations.c.id.desc())).all()
            undone, target = [], None
            for entry in history:
                if entry.version == current or entry.version not in stored:
                    undone.append(entry.id)
                    continue
                target = entry.version
                break
            if target is None:
                raise CardConflict(f"card {name!r} has no earlier active version to roll back to")
            connection.execute(update(card_activations).where(card_activations.c.id.in_(undone)).values(undone=True))
            connection.execute(update(cards).where(cards.c.name == name)
                               .values(active_version=target, updated_at=utcnow()))
            _audit(connection, actor, "rollback", name, target, {"previous": current})
        return self.get(name, target)

    def delete(self, name: str, actor: Actor, version: str | None = None) -> list[str]:
        """Delete a whole card, or one inactive version; returns the versions deleted."""
        trashed: list[tuple[Path | None, str]] = []
        try:
            with self._writing(name) as connection:
                card = _card_row(connection, name)
                _require_write(card, actor, "delete")
                stored = list(connection.execute(select(card_versions.c.version).where(card_versions.c.card == name)
                                                 .order_by(card_versions.c.id)).scalars())
                if version is not None:
                    if version not in stored:
                        raise CardNotFound(f"card {name!r} has no version {version!r} (see mighty cards show {name})")
                    if card.active_version == version:
                        raise CardConflict(f"{name}@{version} is the active version; activate another version "
                                           f"first, or delete the whole card (omit the version)")
                doomed = stored if version is None else [version]
                whole = len(doomed) == len(stored)
                connection.execute(delete(card_activations).where(card_activations.c.card == name,
                                                                  card_activations.c.version.in_(doomed)))
                connection.execute(delete(card_versions).where(card_versions.c.card == name,
                                                               card_versions.c.version.in_(doomed)))
                if whole:
                    connection.execute(delete(cards).where(cards.c.name == name))
                _audit(connection, actor, "delete", name, version, {"versions": doomed, "owner": card.owner})
                for doomed_version in doomed:
                    trashed.append((self.store.unpublish(name, doomed_version), doomed_version))
        except BaseException:
            for folder, doomed_version in trashed:
                self.store.restore(folder, name, doomed_version)
            raise
        for folder, _ in trashed:
            self.store.purge(folder)
        self.store.remove_if_empty(name)
        return doomed

    # ---- internals -----------------------------------------------------------------------------

    def _precheck(self, manifest: CardManifest, actor: Actor) -> None:
        """Refuse early (before copying and loading) what the final transaction would refuse anyway."""
        with self._engine.connect() as connection:
            _check_new_version(connection, manifest, actor)

    def _check_loads(self, staged: Path, static: StaticReport) -> LoadReport:
        key = _content_digest(staged, static)
        with _VERIFIED_LOCK:
            known = _VERIFIED.get(key)
        if known is not None:
            return known
        report = check_loads(staged, static.manifest)
        with _VERIFIED_LOCK:
            _VERIFIED[key] = report
        return report

    def _insert(self, staged: Path, static: StaticReport, actor: Actor, activate: bool | None, action: str,
                details: dict[str, Any]) -> CardRef:
        manifest = static.manifest
        name, version = manifest.name, manifest.version
        published = None
        try:
            with self._writing(name) as connection:
                card = _check_new_version(connection, manifest, actor)
                now = utcnow()
                if card is None:
                    connection.execute(insert(cards).values(name=name, owner=manifest.owner, active_version=None,
                                                            created_at=now, updated_at=now))
                elif card.owner != manifest.owner:
                    connection.execute(update(cards).where(cards.c.name == name).values(owner=manifest.owner))
                connection.execute(insert(card_versions).values(
                    card=name, version=version, manifest=manifest.model_dump(mode="json"),
                    manifest_file=static.manifest_file, size_bytes=static.size_bytes,
                    file_count=len(static.files), registered_at=now, registered_by=actor.name))
                make_active = activate if activate is not None else (card is None or card.active_version is None)
                if make_active:
                    self._set_active(connection, name, version, actor)
                _audit(connection, actor, action, name, version,
                       {**details, "activated": bool(make_active), "size_bytes": static.size_bytes})
                published = self.store.publish(staged, name, version)
        except IntegrityError:
            self._unpublish(published, name, version)
            raise CardConflict(f"{name}@{version} was registered concurrently; versions are immutable: bump "
                               "the version and register again") from None
        except BaseException:
            self._unpublish(published, name, version)
            raise
        return self.get(name, version)

    def _unpublish(self, published: Path | None, name: str, version: str) -> None:
        if published is not None:
            self.store.purge(self.store.unpublish(name, version))
            self.store.remove_if_empty(name)

    def _set_active(self, connection: Connection, name: str, version: str, actor: Actor) -> None:
        now = utcnow()
        connection.execute(update(cards).where(cards.c.name == name).values(active_version=version, updated_at=now))
        connection.execute(insert(card_activations).values(card=name, version=version, activated_at=now,
                                                           activated_by=actor.name, undone=False))

    @contextmanager
    def _writing(self, name: str) -> Iterator[Connection]:
        with self._engine.begin() as connection:
            if connection.dialect.name == "sqlite":
                connection.exec_driver_sql("BEGIN IMMEDIATE")
            elif connection.dialect.name == "postgresql":
                key = zlib.crc32(name.encode())
                connection.execute(text("SELECT pg_advisory_xact_lock(:namespace, :key)"),
                                   {"namespace": _LOCK_NAMESPACE, "key": key - (1 << 32) if key >= 1 << 31 else key})
            yield connection

    def _ref(self, row: Any) -> CardRef:
        manifest = CardManifest.model_validate(row.manifest)
        return CardRef(manifest, self.store.path(row.card, row.version), row.active_version == row.version,
                       aware(row.registered_at), row.registered_by)


def _versions_query():
    return (select(card_versions.c.card, card_versions.c.version, card_versions.c.manifest,
                   card_versions.c.registered_at, card_versions.c.registered_by, cards.c.active_version)
            .join(cards, cards.c.name == card_versions.c.card))


def _card_row(connection: Connection, name: str) -> Any:
    row = connection.execute(select(cards).where(cards.c.name == name)).first()
    if row is None:
        raise CardNotFound(f"no card named {name!r} (see mighty cards list)")
    return row


def _require_write(card: Any, actor: Actor, verb: str) -> None:
    if not actor.can_write(card.owner):
        raise CardForbidden(f"{actor.role} {actor.name!r} cannot {verb} card {card.name!r}, which team "
                            f"{card.owner!r} owns; use a key of that team or an admin key")


def _check_new_version(connection: Connection, manifest: CardManifest, actor: Actor) -> Any:
    """Ownership and uniqueness rules for a new version; returns the card's row (None if new)."""
    name, version = manifest.name, manifest.version
    if not actor.is_admin and actor.team is None:
        raise CardForbidden(f"{actor.role} {actor.name!r} cannot register cards; use a team or admin key")
    card = connection.execute(select(cards).where(cards.c.name == name)).first()
    if card is None:
        if not actor.can_write(manifest.owner):
            raise CardForbidden(f"{actor.role} {actor.name!r} can only register cards owned by team "
                                f"{actor.team!r}, but the manifest says owner = {manifest.owner!r}")
        return None
    if not actor.can_write(card.owner):
        raise CardConflict(f"the card name {name!r} is taken by team {card.owner!r}; choose another name")
    if manifest.owner != card.owner and not actor.is_admin:
        raise CardForbidden(f"only an admin can move card {name!r} from team {card.owner!r} to "
                            f"{manifest.owner!r}; keep owner = {card.owner!r}")
    exists = connection.execute(select(card_versions.c.id).where(card_versions.c.card == name,
                                                                 card_versions.c.version == version)).first()
    if exists is not None:
        raise CardConflict(f"{name}@{version} is already registered and versions are immutable; bump the "
                           "version in the manifest and register again")
    return card


def _audit(connection: Connection, actor: Actor, action: str, card: str, version: str | None,
           details: dict[str, Any]) -> None:
    connection.execute(insert(card_audit).values(at=utcnow(), actor=actor.name, role=actor.role, action=action,
                                                 card=card, version=version, details=details))


def _content_digest(folder: Path, static: StaticReport) -> str:
    """What the load check depends on: every file but the manifest, and the manifest's model section."""
    digest = hashlib.sha256(static.manifest.model.model_dump_json().encode())
    for item in static.files:
        if item.relative == static.manifest_file:
            continue
        digest.update(item.relative.encode() + b"\0")
        with open(folder / item.relative, "rb") as handle:
            for block in iter(lambda: handle.read(1024 * 1024), b""):
                digest.update(block)
    return digest.hexdigest()
