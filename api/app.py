"""The FastAPI application: routers, limits, metrics and error shapes."""
from __future__ import annotations

import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import providers
from api.metrics import REQUEST_SECONDS, REQUESTS
from api.routers import cards, chat, collections, fusion, ops, retrieval
from api.settings import ServiceSettings
from api.state import ServiceState


class BodyLimit:
    """Refuse bodies over the limit with 413, whether or not Content-Length was sent.

    `overrides` maps (method, path) to its own limit: card uploads carry model weights, far larger
    than any JSON body should be."""

    def __init__(self, app: ASGIApp, max_bytes: int, overrides: dict[tuple[str, str], int] | None = None) -> None:
        self.app, self.max_bytes, self.overrides = app, max_bytes, overrides or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.overrides.get((scope.get("method", ""), scope.get("path", "")), self.max_bytes)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await _too_large(limit, send)
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _TooLarge()
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await _too_large(limit, send)


class _TooLarge(Exception):
    pass


async def _too_large(limit: int, send: Send) -> None:
    response = JSONResponse({"detail": f"request body is over the {limit} byte limit"}, status_code=413)
    await send({"type": "http.response.start", "status": 413, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    settings = settings or ServiceSettings()
    providers.install()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.mighty = ServiceState(settings)
        await run_in_threadpool(app.state.mighty.warm_up)
        yield
        app.state.mighty.close()

    app = FastAPI(title="Mighty", version="0.1.0", lifespan=lifespan,
                  description="Retrieval, cited answers and small expert models for large ones.")
    for module in (ops, collections, retrieval, chat, cards, fusion):
        app.include_router(module.router)

    @app.middleware("http")
    async def measure(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        REQUESTS.labels(request.method, path, str(response.status_code)).inc()
        REQUEST_SECONDS.labels(request.method, path).observe(time.perf_counter() - started)
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        reasons = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return JSONResponse({"detail": "; ".join(reasons), "errors": jsonable(exc.errors())}, status_code=422)

    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes,
                       overrides={("POST", "/v1/cards"): settings.max_card_upload_bytes})
    return app


def jsonable(errors) -> list:
    from fastapi.encoders import jsonable_encoder

    return jsonable_encoder(errors, custom_encoder={Exception: str})
