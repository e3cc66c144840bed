"""The Stack: real processes, recorded by PID, killed and restarted on demand, and all gone afterwards."""

from __future__ import annotations

import re
import signal
import socket
import time

import httpx
import psutil
import pytest
import redis

import lab.stack
from lab.errors import StackError
from lab.procs import require_binary, start_redis_server, wait_until
from lab.stack import Stack, StackConfig
from tests.support import squatted_port, stalled, unique_email, wait_task


def test_members_are_real_processes_and_all_stop(stack_factory, no_leftovers) -> None:
    stack = stack_factory(workers=2, beat=True)
    pids = {name: p.pid for name, p in stack.procs.items()}
    assert {"redis", "smtp", "ai", "api", "w1", "w2", "beat"} <= set(pids)
    for name, pid in stack.worker_pids().items():
        cmd = psutil.Process(pid).cmdline()
        assert "celery" in cmd and "worker" in cmd and stack.workers[name].hostname in cmd
        assert len(stack.pool_children(name)) == stack.settings.celery_worker_concurrency
    everything = set(pids.values()) | {c for n in stack.workers for c in stack.pool_children(n)}
    stack.stop()
    assert not [p for p in everything if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]


def test_killed_pool_child_is_replaced_and_worker_main_kill_leaves_no_orphans(stack_factory, no_leftovers) -> None:
    stack = stack_factory(workers=1, api=False, smtp=False, ai_stub=False)
    children = stack.pool_children("w1")
    victim = children[0]
    psutil.Process(victim).send_signal(signal.SIGKILL)
    wait_until(
        lambda: victim not in stack.pool_children("w1") and len(stack.pool_children("w1")) == len(children),
        timeout=30,
        what="the pool to replace the killed child",
    )
    assert stack.celery.send_task("app.tasks.workflows.process_item", args=[4]).get(timeout=30) == 16

    orphans = stack.pool_children("w1")
    stack.kill_worker("w1", signal.SIGKILL)
    wait_until(lambda: not stack.workers["w1"].proc.alive(), timeout=10, what="the worker to die")
    replacement = stack.start_worker()
    assert replacement.name == "w2"
    assert stack.celery.send_task("app.tasks.workflows.process_item", args=[5]).get(timeout=30) == 25
    stack.stop()
    assert not [p for p in orphans if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]


def test_broker_restart_with_aof_keeps_queued_messages(stack_factory) -> None:
    stack = stack_factory(
        workers=0, api=False, smtp=False, ai_stub=False, redis_aof=True, overrides={"CELERY_TASK_IGNORE_RESULT": "true"}
    )
    for i in range(5):
        stack.celery.send_task("app.tasks.workflows.process_item", args=[i])
    assert stack.redis(0).llen("celery") == 5
    stack.restart_member("redis")
    assert stack.redis(0).llen("celery") == 5


def test_health_answers_while_the_broker_is_paused(stack_factory) -> None:
    stack = stack_factory(workers=1, overrides={"API_DISPATCH_TIMEOUT_S": "1"})
    api = httpx.Client(base_url=stack.urls["api"], timeout=10)
    assert api.get("/health").status_code == 200
    with stalled(stack):
        for _ in range(3):  # also with probes still stuck from the previous call
            t0 = time.monotonic()
            resp = api.get("/health", timeout=3)  # a deadline, not a benchmark: it must answer, not hang
            assert resp.status_code == 503
            assert resp.json()["broker"]["ok"] is False
            assert time.monotonic() - t0 < 3
        resp = api.post("/api/v1/workflows/chord", json={"items": [1]}, timeout=10)
        assert resp.status_code == 503
        assert "did not accept the task" in resp.json()["detail"]
        assert resp.headers["retry-after"] == "5"
    wait_until(lambda: api.get("/health").status_code == 200, timeout=30, what="health to recover")
    user = api.post("/api/v1/users", json={"email": unique_email(), "name": "after"})
    assert user.status_code == 201
    assert wait_task(api, user.json()["welcome_task_id"])["status"] == "SUCCESS"


def test_missing_binary_names_the_debian_package(monkeypatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(StackError, match=r"install the Debian package 'redis-server' \(apt-get install redis-server\)"):
        require_binary("redis-server", "redis-server")


def test_taken_api_port_fails_before_starting_anything(stack_factory, no_leftovers) -> None:

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(StackError, match=f"port {port} on 127.0.0.1 is already in use"):
            stack_factory(api_port=port)


def test_stack_can_use_an_existing_redis_and_result_backend(stack_factory, tmp_path) -> None:
    outside, port = start_redis_server("outside-redis", tmp_path / "outside", tmp_path / "outside.log")
    try:
        stack = stack_factory(
            workers=1, api=False, smtp=False, ai_stub=False,
            broker_url=f"redis://127.0.0.1:{port}/0", result_backend=f"redis://127.0.0.1:{port}/5",
        )  # fmt: skip
        assert "redis" not in stack.procs  # it started none of its own
        result = stack.celery.send_task("app.tasks.workflows.process_item", args=[6])
        assert result.get(timeout=30) == 36
        backend = redis.Redis(port=port, db=5)
        assert backend.exists(f"celery-task-meta-{result.id}")  # in the db it was told, not the broker's db 1
        assert not redis.Redis(port=port, db=1).exists(f"celery-task-meta-{result.id}")
    finally:
        outside.stop()


def test_an_unreachable_result_backend_is_refused_before_anything_starts(stack_factory) -> None:
    with pytest.raises(StackError, match=re.escape("the result backend at redis://127.0.0.1:1/0 is not reachable")):
        stack_factory(workers=1, api=False, smtp=False, ai_stub=False, result_backend="redis://127.0.0.1:1/0")


def test_stack_tags_are_random_so_two_stacks_never_share_node_names(tmp_path) -> None:
    # Before: lab{pid}x{ms % 100000}, which wraps every 100 s: two Stacks on one broker could answer each
    # other's pings. Building a Stack starts nothing; its tag is chosen then.
    tags = {Stack(StackConfig(run_dir=tmp_path / str(i)))._tag for i in range(50)}
    assert len(tags) == 50
    assert all(re.fullmatch(r"lab-[0-9a-f]{12}", t) for t in tags)


def test_an_http_member_whose_port_was_taken_gets_another(no_leftovers, stack_factory, monkeypatch) -> None:
    real, handed = lab.stack.free_port, []

    def racing_free_port(host: str = "127.0.0.1") -> int:
        # The AI stub's first pick is a port someone else bound meanwhile.
        picked = port if not handed else real(host)
        handed.append(picked)
        return picked

    monkeypatch.setattr(lab.stack, "free_port", racing_free_port)
    with squatted_port() as port:
        stack = stack_factory(workers=0, api=False, smtp=False, ai_stub=True)
    assert handed[0] == port and stack.urls["ai"] != f"http://127.0.0.1:{port}"
    assert httpx.get(stack.urls["ai"] + "/health", timeout=5).status_code == 200
    assert "already in use" in (stack.run_dir / "logs" / "ai.log").read_text().lower()
