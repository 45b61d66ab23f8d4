"""Health and Prometheus metrics (no key needed: probes and scrapers have none)."""
from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.dependencies import get_state
from api.state import ServiceState

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz(state: ServiceState = Depends(get_state)) -> dict:
    """Live while the process serves; "degraded" names the collections that could not be loaded (only
    those: a probe without a key learns the count of healthy collections, not their names)."""
    names = state.home.names()
    broken = {name: {"healthy": False, "error": error} for name, error in state.unhealthy.items() if name in names}
    return {"status": "degraded" if broken else "ok", "collections": len(names), "unhealthy": broken,
            "auth": not state.settings.no_auth}


@router.get("/metrics")
def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
