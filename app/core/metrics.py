"""Metric names shared by every metrics endpoint of the lab, and the API's own metrics.

Task lifecycle metrics carry celery-exporter's names and labels (``celery_task_*_total{name,hostname,
queue_name}``, ``celery_task_runtime``, ``celery_worker_up{hostname}``...), so celery-mixin's dashboards and
alerts work against the lab unchanged; worker-side series add a ``worker`` label (the node name). They
are produced by one process outside the workers, the events exporter (``lab/exporter.py``): see
docs/metrics.md for why not in the workers.

The API serves its own metrics on ``/metrics`` from its single uvicorn process (no multiprocess mode, so no
stale per-process files): requests by route template and status, latency, and tasks dispatched by name.
"""

from __future__ import annotations

import time
from typing import Any

from celery.signals import before_task_publish
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# --- names (one place: the exporter, the rules, the dashboards and the checks import these) -------------
# ``hostname`` is the host part of the node name, as celery-exporter has it (bounded: publishers' per-process
# ``gen<pid>@host`` names collapse into their host); worker-side series add the node name as ``worker``.
TASK_LABELS = ("name", "hostname", "queue_name")
WORKER_TASK_LABELS = (*TASK_LABELS, "worker")
WORKER_LABELS = ("hostname", "worker")
TASK_STATES = ("sent", "received", "started", "succeeded", "failed", "retried", "rejected", "revoked")
# Seconds. Wide on purpose: the lab's tasks run from milliseconds (emails to a local sink) to minutes (chaos
# probes that sleep), and queue wait under load grows into minutes.
TASK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
UNMATCHED_ROUTE = "<unmatched>"


class ApiMetrics:
    """The API's metrics in their own registry (so tests can build several apps in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "http_requests",
            "HTTP requests answered by the API, by route template and status code.",
            ("method", "route", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "http_request_duration_seconds",
            "Time from receiving a request to the end of its response body, by route template.",
            ("method", "route"),
            buckets=HTTP_BUCKETS,
            registry=self.registry,
        )
        self.dispatched = Counter(
            "api_tasks_dispatched",
            "Tasks the API handed to the broker (workflow members included), by task name.",
            ("name",),
            registry=self.registry,
        )

    def count_publish(self, sender: str | None = None, **_: Any) -> None:
        self.dispatched.labels(sender or "unknown").inc()

    def expose(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def connect_dispatch_counter(metrics: ApiMetrics) -> None:
    """Count every publish from this process. Called by the API only, so workers never pay for it."""
    before_task_publish.connect(metrics.count_publish, weak=False)


def route_template(scope: Scope) -> str:
    """The matched route's template, rebuilt from the path and its parameters.

    Routers record the match differently across FastAPI versions (included routers keep their own
    prefix-less paths); the path with each parameter's segment put back as ``{name}`` does not depend on that.
    """
    if "endpoint" not in scope:
        return UNMATCHED_ROUTE
    params = {str(v): k for k, v in (scope.get("path_params") or {}).items()}
    path: str = scope.get("path", "")
    if not params:
        return path
    return "/".join(f"{{{params[seg]}}}" if seg in params else seg for seg in path.split("/"))


class MetricsMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware task hop): one counter and one histogram update per request.

    The route label is the matched route's template (``/api/v1/tasks/{task_id}``), never the raw path, so
    label cardinality stays bounded; unmatched paths share one label.
    """

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = route_template(scope)
            method = scope.get("method", "GET")
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - start)
