"""Health and Prometheus metrics (no key needed: probes and scrapers have none)."""
from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.dependencies import get_state
from api.state import ServiceState

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz(state: ServiceState = Depends(get_state)) -> dict:
    return {"status": "ok", "collections": len(state.home.names()), "auth": not state.settings.no_auth}


@router.get("/metrics")
def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
