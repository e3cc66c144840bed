"""The API's own metrics: route templates (never raw ids), status codes, dispatches by task name."""

from __future__ import annotations

import pytest
from celery.signals import before_task_publish
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.core.metrics import UNMATCHED_ROUTE, ApiMetrics, MetricsMiddleware, connect_dispatch_counter


@pytest.fixture
def client() -> TestClient:
    from app.main import create_app

    # No `with`: the lifespan (database, dispatcher) is not needed to answer these routes.
    return TestClient(create_app(), raise_server_exceptions=False)


def samples(client: TestClient, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    text = client.get("/metrics").text
    return {
        tuple(sorted(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == name
    }


def test_requests_are_counted_by_route_template_and_status(client: TestClient) -> None:
    for task_id in ("a1", "b2", "c3"):
        client.get(f"/api/v1/tasks/{task_id}/nope")
    client.post("/api/v1/users", json={})
    client.get("/no/such/path")
    got = samples(client, "http_requests_total")
    assert got[(("method", "POST"), ("route", "/api/v1/users"), ("status", "422"))] == 1
    assert got[(("method", "GET"), ("route", UNMATCHED_ROUTE), ("status", "404"))] == 4
    assert not any("a1" in dict(k)["route"] for k in got), "a raw id leaked into the route label"


def test_path_parameters_become_their_names() -> None:
    app = FastAPI()
    metrics = ApiMetrics()

    @app.get("/things/{thing_id}/parts/{part}")
    async def part(thing_id: int, part: str) -> dict[str, str]:
        return {"part": part}

    app.add_middleware(MetricsMiddleware, metrics=metrics)
    client = TestClient(app)
    assert client.get("/things/7/parts/x").status_code == 200
    assert client.get("/things/8/parts/y").status_code == 200
    route = {"method": "GET", "route": "/things/{thing_id}/parts/{part}"}
    assert metrics.registry.get_sample_value("http_requests_total", {**route, "status": "200"}) == 2
    assert metrics.registry.get_sample_value("http_request_duration_seconds_count", route) == 2


def test_publishes_are_counted_by_task_name() -> None:
    metrics = ApiMetrics()
    connect_dispatch_counter(metrics)
    try:
        for name in ("app.tasks.email.send_welcome_email", "app.tasks.email.send_welcome_email", "app.tasks.ai.x"):
            before_task_publish.send(sender=name, body=(), headers={}, exchange="", routing_key="celery")
    finally:
        before_task_publish.disconnect(metrics.count_publish)
    count = metrics.registry.get_sample_value
    assert count("api_tasks_dispatched_total", {"name": "app.tasks.email.send_welcome_email"}) == 2
    assert count("api_tasks_dispatched_total", {"name": "app.tasks.ai.x"}) == 1
