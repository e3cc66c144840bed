"""``Idempotency-Key`` against the real API (redis-server, celery worker, uvicorn, SMTP sink)."""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.api.idempotency import record_key
from lab.procs import wait_until
from lab.stack import Stack
from tests.conftest import FAST_RETRIES
from tests.support import create_user, is_stopped, wait_both_welcomes, wait_task


@pytest.fixture
def api(app_stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=app_stack.urls["api"], timeout=60) as client:
        yield client


def dispatched_total(client: httpx.Client) -> float:
    lines = client.get("/metrics").text.splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("api_tasks_dispatched_total{"))


def key() -> dict[str, str]:
    return {"Idempotency-Key": uuid.uuid4().hex}


def test_the_same_key_twice_answers_the_same_and_dispatches_once(api: httpx.Client, app_stack: Stack) -> None:
    email = f"idem.{uuid.uuid4().hex[:8]}@example.com"
    headers = key()
    before = dispatched_total(api)
    first = api.post("/api/v1/users", json={"email": email, "name": "Ida"}, headers=headers)
    # The same request with its JSON keys in another order and other spacing is the same request.
    again = api.post(
        "/api/v1/users",
        content=json.dumps({"name": "Ida", "email": email}, indent=2),
        headers={**headers, "content-type": "application/json"},
    )
    assert (first.status_code, again.status_code) == (201, 201), (first.text, again.text)
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert dispatched_total(api) == before + 1
    assert wait_task(api, first.json()["welcome_task_id"])["status"] == "SUCCESS"
    assert len(app_stack.sink_messages(to=email)) == 1

    chord_headers = key()
    before = dispatched_total(api)
    a = api.post("/api/v1/workflows/chord", json={"items": [1, 2, 3]}, headers=chord_headers)
    b = api.post("/api/v1/workflows/chord", json={"items": [1, 2, 3]}, headers=chord_headers)
    assert (a.status_code, b.status_code) == (202, 202)
    assert b.json() == a.json()
    after_one = dispatched_total(api)
    assert after_one > before
    c = api.post("/api/v1/workflows/chord", json={"items": [1, 2, 3]}, headers=chord_headers)
    assert (c.status_code, c.json()) == (202, a.json())
    assert dispatched_total(api) == after_one


def test_the_same_key_with_another_body_is_refused(api: httpx.Client) -> None:
    headers = key()
    user = create_user(api)
    first = api.post(f"/api/v1/users/{user['id']}/export", params={"format": "json"}, headers=headers)
    assert first.status_code == 202, first.text
    before = dispatched_total(api)
    other_query = api.post(f"/api/v1/users/{user['id']}/export", params={"format": "csv"}, headers=headers)
    assert other_query.status_code == 422, other_query.text
    assert other_query.json()["message"].startswith("Idempotency-Key: this key was already used")
    chord = key()
    assert api.post("/api/v1/workflows/chord", json={"items": [1]}, headers=chord).status_code == 202
    before = dispatched_total(api)
    other_body = api.post("/api/v1/workflows/chord", json={"items": [2]}, headers=chord)
    assert other_body.status_code == 422, other_body.text
    assert "different request body" in other_body.json()["message"]
    assert dispatched_total(api) == before


def test_a_key_is_scoped_by_endpoint(api: httpx.Client) -> None:
    headers = key()
    user = create_user(api)
    chord = api.post("/api/v1/workflows/chord", json={"items": [4]}, headers=headers)
    export = api.post(f"/api/v1/users/{user['id']}/export", headers=headers)
    assert (chord.status_code, export.status_code) == (202, 202)
    assert chord.json()["task_id"] != export.json()["task_id"]


def test_without_a_key_nothing_changes(api: httpx.Client, app_stack: Stack) -> None:
    cache = app_stack.redis(2)
    try:
        before = set(cache.scan_iter("idempotency:*"))
        a = api.post("/api/v1/workflows/chord", json={"items": [5]})
        b = api.post("/api/v1/workflows/chord", json={"items": [5]})
        assert (a.status_code, b.status_code) == (202, 202)
        assert a.json()["task_id"] != b.json()["task_id"]
        user = create_user(api)
        assert api.post("/api/v1/users", json={"email": user["email"], "name": "x"}).status_code == 409
        assert set(cache.scan_iter("idempotency:*")) == before
    finally:
        cache.close()


@pytest.mark.parametrize("bad", ["", "x" * 256, "has space", "tab\tkey"])
def test_a_malformed_key_is_422(api: httpx.Client, bad: str) -> None:
    resp = api.post("/api/v1/workflows/chord", json={"items": [1]}, headers={"Idempotency-Key": bad})
    assert resp.status_code == 422, resp.text
    assert resp.json()["message"].startswith("Idempotency-Key: ")


# --- in flight, and after a 503 ----------------------------------------------------------------------------
@contextlib.contextmanager
def database_write_lock(stack: Stack) -> Iterator[None]:
    """Hold SQLite's write lock, so a sign-up waits in its INSERT (after it claimed its key) until released."""
    conn = sqlite3.connect(Path(stack.settings.database_url.removeprefix("sqlite:///")), isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def in_background(fn: Callable[[], httpx.Response]) -> Callable[[], httpx.Response]:
    """Run ``fn`` in a thread; the returned function joins it and returns its response."""
    out: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    thread.start()

    def join() -> httpx.Response:
        thread.join(timeout=60)
        assert out, "the background request did not finish"
        return out[0]

    return join


def wait_claimed(stack: Stack, path: str, idem: str) -> dict[str, Any]:
    cache = stack.redis(2)
    try:
        raw = wait_until(
            lambda: cache.get(record_key("POST", path, idem)), timeout=30, what="the first request to claim its key"
        )
    finally:
        cache.close()
    record = json.loads(raw)
    assert record["state"] == "in_flight", record
    return dict(record)


def test_a_key_whose_first_request_is_in_flight_answers_409(api: httpx.Client, app_stack: Stack) -> None:
    headers = key()
    body = {"email": f"flight.{uuid.uuid4().hex[:8]}@example.com", "name": "F"}
    with database_write_lock(app_stack):
        first = in_background(lambda: api.post("/api/v1/users", json=body, headers=headers))
        wait_claimed(app_stack, "/api/v1/users", headers["Idempotency-Key"])
        second = api.post("/api/v1/users", json=body, headers=headers)
        assert second.status_code == 409, second.text
        assert second.headers["retry-after"] == "1"
        assert "still in progress" in second.json()["message"]
    done = first()
    assert done.status_code == 201, done.text
    replay = api.post("/api/v1/users", json=body, headers=headers)
    assert (replay.status_code, replay.json()) == (201, done.json())


def test_a_503_does_not_poison_the_key_and_the_address_gets_one_email(stack_factory: Callable[..., Stack]) -> None:
    """The key is claimed, then the broker (which is also the cache) stalls: the sign-up answers 503 and
    cannot even release its key until Redis resumes. Then a retry with the key dispatches and is stored."""
    stack = stack_factory(
        workers=1,
        ai_stub=False,
        overrides={**FAST_RETRIES, "API_DISPATCH_TIMEOUT_S": "1", "WELCOME_EMAIL_SIGNUP_WAIT_S": "2"},
    )
    email = f"poison.{uuid.uuid4().hex[:8]}@example.com"
    body, headers = {"email": email, "name": "P"}, key()
    redis_pid = stack.procs["redis"].pid
    with httpx.Client(base_url=stack.urls["api"], timeout=60) as client:
        with database_write_lock(stack):
            first = in_background(lambda: client.post("/api/v1/users", json=body, headers=headers))
            wait_claimed(stack, "/api/v1/users", headers["Idempotency-Key"])
            stack.signal_member("redis", signal.SIGSTOP)
        api_log = stack.procs["api"].log_path
        try:
            wait_until(lambda: is_stopped(redis_pid), timeout=5, what="redis-server stopped", interval=0.01)
            answered = first()
            # Keep Redis stalled until the API's release of the key has failed at least once, so that the
            # retry below depends on the release being tried again once Redis resumes.
            wait_until(
                lambda: "idempotency key release pending" in api_log.read_text(errors="replace"),
                timeout=30,
                what="the API to fail releasing the key while Redis is stalled",
            )
        finally:
            stack.signal_member("redis", signal.SIGCONT)
        assert answered.status_code == 503, answered.text

        def retried() -> httpx.Response | None:
            resp = client.post("/api/v1/users", json=body, headers=headers)
            return None if resp.status_code == 409 else resp  # 409 until the release lands

        retry = wait_until(retried, timeout=30, what="the key to be released", interval=0.2)
        assert retry.status_code == 201, retry.text
        replay = client.post("/api/v1/users", json=body, headers=headers)
        assert (replay.status_code, replay.json()) == (201, retry.json())
        assert wait_task(client, retry.json()["welcome_task_id"])["status"] == "SUCCESS"

    results = wait_both_welcomes(stack, email)
    assert len(stack.sink_messages(to=email)) == 1, results
