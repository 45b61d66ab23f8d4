"""FastAPI dependencies: the service state, the caller's identity and its rate limit."""
from __future__ import annotations

from fastapi import Depends, HTTPException, Request, status

from api.keys import Principal
from api.state import ServiceState

ANONYMOUS_ADMIN = Principal("anonymous", "admin")


def get_state(request: Request) -> ServiceState:
    return request.app.state.mighty


def get_principal(request: Request, state: ServiceState = Depends(get_state)) -> Principal:
    if state.settings.no_auth:
        principal = ANONYMOUS_ADMIN
    else:
        token = request.headers.get("x-api-key")
        authorization = request.headers.get("authorization", "")
        if not token and authorization.lower().startswith("bearer "):
            token = authorization[7:].strip()
        if not token:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing API key: send 'Authorization: Bearer <key>'",
                                headers={"WWW-Authenticate": "Bearer"})
        principal = state.keys.verify(token)
        if principal is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid or revoked API key",
                                headers={"WWW-Authenticate": "Bearer"})
    wait = state.limiter.allow(principal.name)
    if wait:
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS,
                            f"rate limit of {state.limiter.per_minute} requests/minute exceeded",
                            headers={"Retry-After": str(max(1, round(wait)))})
    return principal


def require_admin(principal: Principal = Depends(get_principal)) -> Principal:
    if not principal.is_admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"role {principal.role!r} cannot do this; an admin key is required")
    return principal


def require_writer(principal: Principal = Depends(get_principal)) -> Principal:
    if principal.role == "reader":
        raise HTTPException(status.HTTP_403_FORBIDDEN, "reader keys can only query")
    return principal
