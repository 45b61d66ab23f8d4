"""Expert cards over REST: list, inspect, upload (multipart), activate, roll back, delete, audit.

Any key may read. Writing goes through the registry's ownership rules: a team key only touches cards
its team owns, admin keys touch all, reader keys none. Uploads are written to a private folder under
the card store, then registered exactly like `mighty cards register` (same validation).
"""
from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import TypeVar

from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, UploadFile, status

from api.card_registry import actor_for
from api.card_schemas import ActivateRequest, AuditOut, CardOut, CardVersionOut, DeletedOut
from api.dependencies import get_principal, get_state
from api.keys import Principal
from api.state import ServiceState
from experts.manifest import MANIFEST_NAMES, ManifestError, parse_manifest
from experts.models import BaseNotAllowed, check_base
from experts.registry import CardConflict, CardError, CardForbidden, CardNotFound, CardValidationError

router = APIRouter(prefix="/v1", tags=["cards"])
T = TypeVar("T")
_STATUS = ((CardNotFound, status.HTTP_404_NOT_FOUND), (CardConflict, status.HTTP_409_CONFLICT),
           (CardForbidden, status.HTTP_403_FORBIDDEN), (CardValidationError, status.HTTP_422_UNPROCESSABLE_CONTENT))
_MAX_DEPTH = 8
_MAX_MANIFEST_BYTES = 1024 * 1024


def _call(work: Callable[..., T], *args, **kwargs) -> T:
    try:
        return work(*args, **kwargs)
    except CardError as error:
        code = next((code for kind, code in _STATUS if isinstance(error, kind)), status.HTTP_400_BAD_REQUEST)
        raise HTTPException(code, str(error)) from None


def _unprocessable(reason: str) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, reason)


@router.get("/cards")
def list_cards(include_inactive: bool = Query(False, alias="all", description="every version, not only active"),
               state: ServiceState = Depends(get_state), _: Principal = Depends(get_principal)) -> list[CardVersionOut]:
    return [CardVersionOut.of(ref) for ref in state.cards.list(include_inactive=include_inactive)]


@router.get("/cards/{name}")
def get_card(name: str, state: ServiceState = Depends(get_state), _: Principal = Depends(get_principal)) -> CardOut:
    return CardOut.of(_call(state.cards.summary, name))


@router.post("/cards", status_code=status.HTTP_201_CREATED)
def upload_card(manifest: UploadFile = File(..., description="card.toml or card.yaml"),
                files: list[UploadFile] = File(default=[], description="the card's files; each upload's filename "
                                                                       "is its path in the card folder, e.g. "
                                                                       "adapter/adapter_model.safetensors"),
                activate: bool | None = Form(None, description="default: active if no version is"),
                state: ServiceState = Depends(get_state),
                principal: Principal = Depends(get_principal)) -> CardVersionOut:
    if not principal.is_admin and principal.team is None:
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"role {principal.role!r} cannot register cards; "
                                                       "use a team or admin key")
    manifest_name = manifest.filename or ""
    suffix = PurePosixPath(manifest_name).suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml"):
        raise _unprocessable(f"manifest: {manifest_name!r} must be a .toml or .yaml file (card.toml, card.yaml)")
    raw = manifest.file.read(_MAX_MANIFEST_BYTES + 1)
    if len(raw) > _MAX_MANIFEST_BYTES:
        raise _unprocessable(f"manifest: {manifest_name!r} is over {_MAX_MANIFEST_BYTES} bytes; a manifest is a "
                             "short TOML or YAML file")
    try:
        text = raw.decode("utf-8")
        parsed = parse_manifest(text, PurePosixPath(manifest_name).name)
        for base in {parsed.model.base, parsed.fusion.base, *parsed.model.steers} - {None}:
            check_base(base)  # uploaders name allow-listed bases, never server paths or arbitrary hub ids
    except UnicodeDecodeError:
        raise _unprocessable(f"manifest: {manifest_name!r} is not UTF-8 text") from None
    except (ManifestError, BaseNotAllowed) as error:
        raise _unprocessable(f"{error}; fix the manifest and upload again") from None
    paths = [_relative_path(index, upload.filename) for index, upload in enumerate(files)]
    uploads = state.settings.cards_dir / ".uploads"
    folder = uploads / uuid.uuid4().hex
    folder.mkdir(parents=True)
    try:
        (folder / ("card.yaml" if suffix in (".yaml", ".yml") else "card.toml")).write_text(text, encoding="utf-8")
        for relative, upload in zip(paths, files):
            target = folder.joinpath(*relative.parts)
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(target, "xb") as handle:
                    shutil.copyfileobj(upload.file, handle, 1024 * 1024)
            except (FileExistsError, NotADirectoryError, IsADirectoryError):
                raise _unprocessable(f"files: {relative.as_posix()!r} clashes with another uploaded path") from None
        ref = _call(state.cards.register, folder, actor_for(principal), activate, origin="upload")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return CardVersionOut.of(ref)


def _relative_path(index: int, filename: str | None) -> PurePosixPath:
    """An upload's filename as a path inside the card, refusing anything that could leave the folder."""
    name = filename or ""
    path = PurePosixPath(name)
    if (not name or "\\" in name or "\0" in name or path.is_absolute() or name.endswith("/")
            or any(part in ("", ".", "..") for part in name.split("/")) or len(path.parts) > _MAX_DEPTH):
        raise _unprocessable(f"files[{index}]: {name!r} is not a relative path inside the card (no '..', no "
                             "leading '/', no backslashes); name each file by its path in the card folder, "
                             "e.g. adapter/adapter_model.safetensors")
    if name in MANIFEST_NAMES:
        raise _unprocessable(f"files[{index}]: {name!r}: send the manifest in the 'manifest' field, not in 'files'")
    return path


@router.post("/cards/{name}/activate")
def activate_card(name: str, body: ActivateRequest, state: ServiceState = Depends(get_state),
                  principal: Principal = Depends(get_principal)) -> CardVersionOut:
    return CardVersionOut.of(_call(state.cards.activate, name, body.version, actor_for(principal)))


@router.post("/cards/{name}/rollback")
def rollback_card(name: str, state: ServiceState = Depends(get_state),
                  principal: Principal = Depends(get_principal)) -> CardVersionOut:
    return CardVersionOut.of(_call(state.cards.rollback, name, actor_for(principal)))


@router.delete("/cards/{name}")
def delete_card(name: str, version: str | None = Query(None, description="delete one inactive version only"),
                state: ServiceState = Depends(get_state), principal: Principal = Depends(get_principal)) -> DeletedOut:
    return DeletedOut(name=name, deleted=_call(state.cards.delete, name, actor_for(principal), version=version))


@router.get("/cards/{name}/audit")
def card_audit(name: str, limit: int = Query(100, ge=1, le=1000), state: ServiceState = Depends(get_state),
               _: Principal = Depends(get_principal)) -> list[AuditOut]:
    return [AuditOut.of(entry) for entry in state.cards.audit(name, limit=limit)]
