"""Browser-borne attacks on a local server: cross-site writes and DNS rebinding, refused as ASGI middleware.

A web page a user visits can POST to `http://127.0.0.1:8000` (a multipart form needs no CORS
preflight), and a rebinding domain (`evil.example` resolving to 127.0.0.1) can even read answers,
because then the browser thinks the page and the server share an origin. Two checks close both:

- Host: the `Host` header must name the address the server was bound to (or a name the operator
  allows with `MIGHTY_ALLOWED_HOSTS`); a rebound name is answered 400 before any route runs. When the
  server is bound to every interface (0.0.0.0) and no names are configured the Host is not checked,
  because the server cannot know its public names (such a server always requires API keys).
- Origin: a state-changing request (anything but GET, HEAD, OPTIONS) that a browser marks as coming
  from another site (`Origin` other than the server's own, or `Origin: null`, or `Sec-Fetch-Site:
  cross-site/same-site`) is answered 403. Clients that are not browsers (curl, httpx, SDKs) send
  neither header and are unaffected; `MIGHTY_ALLOWED_ORIGINS` admits a trusted web front end.
"""
from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_list(value: str) -> set[str]:
    """A comma-separated setting as a set of lowercase entries."""
    return {item.strip().lower().rstrip("/") for item in value.split(",") if item.strip()}


def allowed_host_names(bound: str | None, configured: str) -> set[str] | None:
    """The Host names this server answers to, or None when the Host header cannot be checked."""
    names = split_list(configured)
    if bound is None or (bound in WILDCARD_HOSTS and not names):
        return None
    if bound not in WILDCARD_HOSTS:
        names.add(bound.lower().strip("[]"))
    if bound == "localhost" or is_loopback(bound.strip("[]")):
        names |= LOOPBACK_NAMES
    return names


def _host_name(host: str) -> str:
    """`example.org:8000` -> `example.org`; `[::1]:8000` -> `::1`."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class OriginGuard:
    """ASGI middleware: 400 for a Host this server is not, 403 for a cross-site state-changing request."""

    def __init__(self, app: ASGIApp, host_names: set[str] | None, allowed_origins: set[str]) -> None:
        self.app, self.host_names, self.allowed_origins = app, host_names, allowed_origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
        reason, status = self._refusal(scope.get("method", "GET"), headers)
        if reason:
            return await JSONResponse({"detail": reason}, status_code=status)(scope, receive, send)
        await self.app(scope, receive, send)

    def _refusal(self, method: str, headers: dict[str, str]) -> tuple[str | None, int]:
        host = headers.get("host", "")
        if self.host_names is not None and _host_name(host) not in self.host_names:
            return (f"Host {host[:100]!r} is not a name of this server (allowed: {', '.join(sorted(self.host_names))}); "
                    "set MIGHTY_ALLOWED_HOSTS to serve other names"), 400
        if method.upper() in SAFE_METHODS:
            return None, 200
        origin = headers.get("origin")
        if origin is not None:
            parts = urlsplit(origin)
            if origin.lower().rstrip("/") in self.allowed_origins or (parts.scheme in ("http", "https")
                                                                       and parts.netloc.lower() == host.lower()):
                return None, 200
            return (f"cross-origin {method} refused: Origin {origin[:100]!r} is not this server "
                    "(set MIGHTY_ALLOWED_ORIGINS to admit a trusted web front end)"), 403
        if headers.get("sec-fetch-site", "").lower() in ("cross-site", "same-site"):
            return f"cross-site {method} refused (Sec-Fetch-Site: {headers['sec-fetch-site'][:20]})", 403
        return None, 200
