"""Service limits in-process: rate limiting, retrieval timeouts, --no-auth defaults."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.origin import is_loopback as _is_loopback
from api.settings import ServiceSettings
from api.state import RateLimiter


def test_rate_limit_answers_429_with_retry_after(demo_home, tmp_path):
    settings = ServiceSettings(home=demo_home, database_url=f"sqlite:///{tmp_path}/k.db", no_auth=True,
                               rate_limit_per_minute=3)
    with TestClient(create_app(settings)) as client:
        codes = [client.get("/v1/collections").status_code for _ in range(5)]
        assert codes[:3] == [200, 200, 200] and codes[3] == 429
        limited = client.get("/v1/collections")
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1


def test_retrieval_timeout_answers_504(demo_home, tmp_path):
    settings = ServiceSettings(home=demo_home, database_url=f"sqlite:///{tmp_path}/k.db", no_auth=True,
                               retrieval_timeout_s=1e-6)
    with TestClient(create_app(settings)) as client:
        response = client.post("/v1/retrieve", json={"query": "generations", "collection": "demo"})
        assert response.status_code == 504 and response.json()["detail"]["stage"] == "retrieval"


def test_token_bucket_refills():
    limiter = RateLimiter(60)
    assert all(limiter.allow("k") == 0 for _ in range(60))
    assert limiter.allow("k") > 0 and limiter.allow("other") == 0


@pytest.mark.parametrize("host,expected", [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                           ("0.0.0.0", False), ("10.1.2.3", False)])
def test_no_auth_only_defaults_on_for_loopback(host, expected):
    assert _is_loopback(host) is expected
