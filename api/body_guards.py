"""ASGI guards on request bodies, applied before any route sees them: size, and JSON text validity."""
from __future__ import annotations

import json
import re

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.error_handlers import SafeJSONResponse
from indexes.documents import format_size


class BodyLimit:
    """Refuse bodies over the limit with 413, whether or not Content-Length was sent.

    A chunked body is counted as it arrives; going over raises an `HTTPException(413)` from
    `receive`, which FastAPI re-raises as is (any other error while reading a body becomes its
    generic 400). `overrides` maps (method, path) to its own limit: card uploads carry model
    weights, far larger than any JSON body should be."""

    def __init__(self, app: ASGIApp, max_bytes: int, overrides: dict[tuple[str, str], int] | None = None) -> None:
        self.app, self.max_bytes, self.overrides = app, max_bytes, overrides or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.overrides.get((scope.get("method", ""), scope.get("path", "")), self.max_bytes)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await _reply(send, 413, _too_large(limit))
        seen = 0
        replaced = started = False

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise HTTPException(413, _too_large(limit))
            return message

        async def tracked(message: Message) -> None:
            # whatever error the app made of the 413 raised while it read the body (a multipart
            # parser wraps it into its own 400), the client is told the body was too large
            nonlocal replaced, started
            if message["type"] == "http.response.start" and seen > limit and not started:
                replaced = True
                await _reply(send, 413, _too_large(limit))
            if not replaced:
                started = started or message["type"] == "http.response.start"
                await send(message)

        try:
            await self.app(scope, limited, tracked)
        except HTTPException as exc:
            if exc.status_code != 413 or started or replaced:
                raise
            await _reply(send, 413, exc.detail)


def _too_large(limit: int) -> str:
    return f"request body is over the {format_size(limit)} limit"


async def _reply(send: Send, status: int, detail: str) -> None:
    response = SafeJSONResponse({"detail": detail}, status_code=status)
    await send({"type": "http.response.start", "status": status, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


# a surrogate as a JSON escape (\ud800-\udfff) or as the raw bytes json.loads lets through
_MAYBE_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")


def lone_surrogate(body: bytes) -> str | None:
    """The first lone surrogate in a JSON body, else None (also for bodies that are not JSON)."""
    if not _MAYBE_SURROGATE.search(body):
        return None  # the common case costs one scan, no parse
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None  # not JSON: FastAPI answers that itself
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        return repr(exc.object[exc.start])
    return None


class StrictJsonText:
    """Refuse JSON bodies holding lone surrogates with 422: such text cannot be stored, searched or echoed.

    Checked once here, for every route, instead of in each place that encodes text."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        content_type = dict(scope.get("headers") or []).get(b"content-type", b"").lower()
        if scope["type"] != "http" or (content_type and b"json" not in content_type):
            return await self.app(scope, receive, send)
        chunks, message = [], {"type": "http.request", "more_body": True}
        while message.get("more_body"):
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
        body = b"".join(chunks)
        if (found := lone_surrogate(body)) is not None:
            return await _reply(send, 422, f"request body: text is not valid Unicode (lone surrogate {found}); "
                                           "send UTF-8 text")
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
