"""Prometheus metrics: requests and latency per route, latency per pipeline stage."""
from __future__ import annotations

from prometheus_client import Counter, Histogram

REQUESTS = Counter("mighty_requests_total", "HTTP requests", ["method", "route", "status"])
REQUEST_SECONDS = Histogram("mighty_request_seconds", "HTTP request latency", ["method", "route"],
                            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
STAGE_SECONDS = Histogram("mighty_stage_seconds", "Pipeline stage latency", ["stage"],
                          buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
