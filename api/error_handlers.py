"""Error responses that can never fail themselves and never carry a traceback.

A validation error echoes the client's input; if that input holds a lone surrogate, a plain UTF-8
encode of the echo raised and turned a 422 into a 500. Every JSON body here is encoded with
`backslashreplace`, which writes such a character as its JSON escape (`\\ud800`): still valid JSON.
The catch-all handler is defence in depth: an unexpected error is logged with its traceback on the
server and answered with a generic 500 that says nothing about the code.
"""
from __future__ import annotations

import json
import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from indexes.shard_search import ShardUnavailable

log = logging.getLogger("mighty.api")


class SafeJSONResponse(JSONResponse):
    """JSON whose encoding cannot fail on text a client sent (lone surrogates are escaped)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None,
                          separators=(",", ":")).encode("utf-8", "backslashreplace")


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> Response:
        # floats too: a rejected NaN or Infinity is echoed as text, since strict JSON cannot carry it
        errors = jsonable_encoder(exc.errors(), custom_encoder={
            Exception: str, float: lambda v: v if math.isfinite(v) else str(v)})
        reasons = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors]
        return SafeJSONResponse({"detail": "; ".join(reasons), "errors": errors}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        headers = getattr(exc, "headers", None)
        if exc.status_code in (204, 304):
            return Response(status_code=exc.status_code, headers=headers)
        return SafeJSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(ShardUnavailable)
    async def shard_unavailable(_: Request, exc: ShardUnavailable) -> Response:
        # a sharded collection whose policy refuses partial results: retry later, never a short list
        return SafeJSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> Response:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return SafeJSONResponse({"detail": "internal error; the server log has the details"}, status_code=500)
