"""Prometheus metrics: requests and latency per route, latency per pipeline stage, cascade escalations."""
from __future__ import annotations

from prometheus_client import Counter, Histogram

REQUESTS = Counter("mighty_requests_total", "HTTP requests", ["method", "route", "status"])
REQUEST_SECONDS = Histogram("mighty_request_seconds", "HTTP request latency", ["method", "route"],
                            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
STAGE_SECONDS = Histogram("mighty_stage_seconds", "Pipeline stage latency", ["stage"],
                          buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
CASCADE_ANSWERS = Counter("mighty_cascade_answers_total", "Answers by cascade models, by who answered",
                          ["collection", "policy", "answered_by"])
CASCADE_ESCALATIONS = Counter("mighty_cascade_escalations_total", "Cascade answers sent on to the large model",
                              ["collection", "policy"])
