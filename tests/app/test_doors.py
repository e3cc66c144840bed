"""The HTTP doors against the real API: a stalled cache, /health on an idle and a stalled broker, body size
limits, strict types, unparseable bodies, and what the OpenAPI says each route can answer."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from lab.stack import Stack, StackConfig
from tests.support import create_user, stalled


@pytest.fixture(scope="module")
def door_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A Stack of its own: these tests stall its redis-server, which must not disturb the session's."""
    cfg = StackConfig(run_dir=tmp_path_factory.mktemp("doors"), workers=1, smtp=True, ai_stub=False)
    with Stack(cfg) as stack:
        yield stack


@pytest.fixture
def client(door_stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=door_stack.urls["api"], timeout=30) as c:
        yield c


def test_task_status_answers_503_while_the_cache_is_stalled(client: httpx.Client, door_stack: Stack) -> None:
    # Before: a plain-text 500 (redis TimeoutError) after the client's 5 s socket timeout.
    deadline = door_stack.settings.api_dispatch_timeout_s
    with stalled(door_stack):
        t0 = time.monotonic()
        resp = client.get("/api/v1/tasks/some-task-id")
        elapsed = time.monotonic() - t0
    assert resp.status_code == 503, resp.text
    assert resp.headers["retry-after"] == "5"
    assert "did not answer" in resp.json()["detail"]
    assert elapsed < deadline + 1.0
    assert client.get("/api/v1/tasks/some-task-id").status_code == 200  # and back once Redis is


def test_health_is_stable_when_idle_and_down_within_a_second_when_stalled(
    client: httpx.Client, door_stack: Stack
) -> None:
    # Before: 10 of 20 probes on an idle healthy stack answered 503 (a 0.27 s worker ping with no limit).
    codes = [client.get("/health").status_code for _ in range(100)]
    assert codes.count(200) == 100, codes
    with stalled(door_stack):
        for _ in range(5):
            t0 = time.monotonic()
            resp = client.get("/health")
            assert resp.status_code == 503
            assert time.monotonic() - t0 < 1.0  # the contract: an answer within a second, whatever the broker does


def test_a_body_over_the_limit_is_413_before_it_is_read(client: httpx.Client, door_stack: Stack) -> None:
    limit = door_stack.settings.api_max_body_bytes
    big = b"x" * (limit + 1)
    resp = client.post("/api/v1/users", content=big, headers={"content-type": "application/json"})
    assert resp.status_code == 413, resp.text
    assert "API_MAX_BODY_BYTES" in resp.json()["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
        for _ in range(limit // 65536 + 2):
            yield b" " * 65536

    resp = client.post("/api/v1/users", content=chunks(), headers={"content-type": "application/json"})
    assert resp.status_code == 413, resp.text
    # Just under the limit is read and validated as usual (a 422 for a body that is not a user).
    padded = b'{"email": "a@example.com", "name": "x"}' + b" " * (limit - 100)
    assert client.post("/api/v1/users", content=padded, headers={"content-type": "application/json"}).status_code in (
        201,
        409,
    )


@pytest.mark.parametrize(
    "body",
    [b'\xff\xfe{"user_id": 1}', b"[" * 5000 + b"]" * 5000],
    ids=["invalid-utf8", "deeply-nested"],
)
def test_an_unparseable_body_is_422_with_a_message(client: httpx.Client, body: bytes) -> None:
    resp = client.post("/api/v1/workflows/chain", content=body, headers={"content-type": "application/json"})
    assert resp.status_code == 422, resp.text  # before: a bare 400 {"detail": ...}
    assert resp.json()["message"].startswith("body: ")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/workflows/chord", {"items": [False]}),  # before: accepted as 0
        ("/api/v1/workflows/chord", {"items": [1.0]}),
        ("/api/v1/workflows/chain", {"user_id": True}),
        ("/api/v1/workflows/chain", {"user_id": "7"}),
        ("/api/v1/workflows/chain", {"user_id": 216.0}),
        ("/api/v1/workflows/group", {"user_ids": ["1"], "subject": "s", "body": "b"}),
    ],
)
def test_ids_and_items_are_strict(client: httpx.Client, path: str, body: dict) -> None:
    resp = client.post(path, json=body)
    assert resp.status_code == 422, resp.text
    assert "valid integer" in resp.json()["message"]


def test_a_path_id_is_still_the_digits(client: httpx.Client) -> None:
    user = create_user(client)
    assert client.post(f"/api/v1/users/{user['id']}/export").status_code == 202
    assert client.post("/api/v1/users/true/export").status_code == 422


def test_openapi_documents_every_status(client: httpx.Client) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    statuses = {(p, m): set(op["responses"]) for p, ops in paths.items() for m, op in ops.items()}
    for (path, method), codes in statuses.items():
        if method == "post":
            assert {"409", "413", "422", "503"} <= codes, (path, codes)
    for path in ("/api/v1/workflows/chain", "/api/v1/workflows/group", "/api/v1/ai/completions"):
        assert "404" in statuses[(path, "post")], path
    assert {"422", "503"} <= statuses[("/api/v1/tasks/{task_id}", "get")]
