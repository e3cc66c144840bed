"""Hostile input: poison messages on the broker and fuzzed HTTP requests against a real Stack."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection

from app.core.timeline import read_timeline
from lab.procs import wait_until
from lab.stack import Stack


class Exploit:
    """Unpickling this runs a shell command: proof that a pickle body was (not) deserialized."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def headers_for(task: str, task_id: str) -> dict[str, Any]:
    return {
        "lang": "py",
        "task": task,
        "id": task_id,
        "root_id": task_id,
        "parent_id": None,
        "group": None,
        "retries": 0,
        "argsrepr": "()",
        "kwargsrepr": "{}",
        "origin": "hostile-test",
        "eta": None,
        "expires": None,
        "timelimit": [None, None],
        "shadow": None,
        "ignore_result": False,
    }


def publish(stack: Stack, body: bytes, content_type: str, headers: dict[str, Any]) -> None:
    with Connection(stack.settings.celery_broker_url) as conn:
        conn.Producer().publish(
            body,
            exchange="celery",
            routing_key="celery",
            content_type=content_type,
            content_encoding="binary",
            headers=headers,
        )


def worker_log(stack: Stack) -> str:
    return "".join(w.proc.log_path.read_text(errors="replace") for w in stack.workers.values())


def assert_still_consuming(stack: Stack) -> None:
    result = stack.celery.send_task("app.tasks.workflows.process_item", args=[9])
    assert result.get(timeout=60) == 81
    assert all(w.proc.alive() for w in stack.workers.values())


def test_pickle_message_is_refused_and_never_executed(app_stack: Stack, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    task_id = str(uuid.uuid4())
    body = pickle.dumps(((Exploit(marker),), {}, {"callbacks": None, "errbacks": None, "chain": None}))
    publish(app_stack, body, "application/x-python-serialize", headers_for("app.tasks.workflows.process_item", task_id))
    wait_until(lambda: "untrusted content" in worker_log(app_stack), timeout=30, what="the refusal in the log")
    assert_still_consuming(app_stack)
    assert not marker.exists(), "the pickle payload was deserialized"
    assert read_timeline(task_id, app_stack.redis(2)) is None
    assert app_stack.celery.AsyncResult(task_id).state == "PENDING"


def test_malformed_json_body_is_rejected_and_logged(app_stack: Stack) -> None:
    task_id = str(uuid.uuid4())
    publish(app_stack, b"{not json", "application/json", headers_for("app.tasks.workflows.process_item", task_id))
    wait_until(lambda: task_id in worker_log(app_stack), timeout=30, what="the decode error in the log")
    assert_still_consuming(app_stack)
    assert read_timeline(task_id, app_stack.redis(2)) is None


def test_unregistered_task_is_rejected(app_stack: Stack) -> None:
    task_id = str(uuid.uuid4())
    body = json.dumps([["rm -rf /"], {}, {}]).encode()
    publish(app_stack, body, "application/json", headers_for("os.system", task_id))
    wait_until(lambda: "unregistered task" in worker_log(app_stack), timeout=30, what="the rejection in the log")
    assert_still_consuming(app_stack)


@pytest.mark.parametrize("item", [b"\x00\xffgarbage, not even text", b"[1, 2]", b'{"no": "body"}'])
def test_garbage_on_the_queue_list_is_quarantined_not_fatal(app_stack: Stack, item: bytes) -> None:
    """A stock kombu worker dies on these (JSONDecodeError: Unrecoverable error); ours keeps them, and goes on."""
    broker = app_stack.redis(0)
    before = broker.llen("celery.poison")
    broker.lpush("celery", item)
    wait_until(lambda: broker.llen("celery.poison") == before + 1, timeout=30, what="the item to be quarantined")
    assert broker.lindex("celery.poison", 0) == item
    assert "poison item quarantined" in worker_log(app_stack)
    assert_still_consuming(app_stack)


def test_fuzzed_requests_never_get_a_5xx(app_stack: Stack, tmp_path: Path) -> None:
    """schemathesis (its own CLI: its pytest plugin does not support pytest 9) against the live OpenAPI schema."""
    url = app_stack.urls["api"] + "/openapi.json"
    cmd = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        url,
        "--checks",
        "not_a_server_error",
        "--max-examples",
        "20",
        "--seed",
        "1",
        "--workers",
        "1",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path),
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path
    )  # under pytest-timeout's 300 s
    try:
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
        report = next(tmp_path.glob("*.xml")).read_text()
        assert report.count("<testcase") >= 6  # every operation was exercised
    finally:
        app_stack.sink_refuse(0)
