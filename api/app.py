"""The FastAPI application: routers, limits, metrics and error shapes."""
from __future__ import annotations

import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool

from api import error_handlers
from api.body_guards import BodyLimit, StrictJsonText
from api import providers
from api.metrics import REQUEST_SECONDS, REQUESTS
from api.origin import OriginGuard, allowed_host_names, split_list
from api.routers import cards, chat, collections, fusion, ops, retrieval
from api.settings import ServiceSettings
from api.state import Backend, ServiceState
from indexes.collection import CollectionBroken
from indexes.embedder_check import EmbedderChanged, EmbedderIncompatible
from indexes.embedder_allowlist import EmbedderNotAllowed
from indexes.names import InvalidCollectionName


def create_app(settings: ServiceSettings | None = None, backend: Backend | None = None) -> FastAPI:
    settings = settings or ServiceSettings()
    backend = backend or Backend()
    providers.install(backend.llm_providers())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.mighty = ServiceState(settings, backend)
        await run_in_threadpool(app.state.mighty.warm_up)
        yield
        app.state.mighty.close()

    app = FastAPI(title="Mighty", version="0.1.0", lifespan=lifespan,
                  default_response_class=error_handlers.SafeJSONResponse,
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

    error_handlers.install(app)
    app.add_middleware(StrictJsonText)  # inside BodyLimit: it buffers only bodies already within the limit

    @app.exception_handler(InvalidCollectionName)
    @app.exception_handler(EmbedderNotAllowed)
    async def refused_name(_: Request, exc: ValueError) -> error_handlers.SafeJSONResponse:
        # raised by the indexes layer, wherever a name or embedder arrived from (body, path, card)
        return error_handlers.SafeJSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(EmbedderChanged)
    @app.exception_handler(EmbedderIncompatible)
    async def embedder_conflict(_: Request, exc: RuntimeError) -> error_handlers.SafeJSONResponse:
        # stored vectors and the current embedder disagree: the detail names the fix (`index reembed`)
        return error_handlers.SafeJSONResponse({"detail": str(exc), "reason": "embedder_changed"}, status_code=409)

    @app.exception_handler(CollectionBroken)
    async def broken_collection(_: Request, exc: CollectionBroken) -> error_handlers.SafeJSONResponse:
        return error_handlers.SafeJSONResponse({"detail": str(exc)}, status_code=503)

    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes,
                       overrides={("POST", "/v1/cards"): settings.max_card_upload_bytes})
    app.add_middleware(OriginGuard, host_names=allowed_host_names(settings.host, settings.allowed_hosts),
                       allowed_origins=split_list(settings.allowed_origins))
    return app
