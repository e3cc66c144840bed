"""Hostile input: poison messages on the broker and fuzzed HTTP requests against a real Stack."""

from __future__ import annotations

import base64
import json
import os
import pickle
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from kombu import Connection

from app.core.broker import envelope_problem
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


def last_poison(stack: Stack, task_id: str) -> dict[str, Any] | None:
    """The quarantine record of ``task_id`` on the default queue's ``.poison.why`` list, if any."""
    for raw in stack.redis(0).lrange(f"{stack.queue}.poison.why", 0, 50):
        record = json.loads(raw)
        if record.get("task_id") == task_id:
            return record
    return None


def assert_still_consuming(stack: Stack) -> None:
    result = stack.celery.send_task("app.tasks.workflows.process_item", args=[9])
    assert result.get(timeout=60) == 81
    assert all(w.proc.alive() for w in stack.workers.values())


def test_pickle_message_is_refused_and_never_executed(app_stack: Stack, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    task_id = str(uuid.uuid4())
    body = pickle.dumps(((Exploit(marker),), {}, {"callbacks": None, "errbacks": None, "chain": None}))
    publish(app_stack, body, "application/x-python-serialize", headers_for("app.tasks.workflows.process_item", task_id))
    # Quarantined by the transport before Celery sees it (an accepted content type is part of a valid message).
    wait_until(lambda: last_poison(app_stack, task_id), timeout=30, what="the pickle message quarantined")
    assert last_poison(app_stack, task_id)["reason"] == "content_type"
    assert_still_consuming(app_stack)
    assert not marker.exists(), "the pickle payload was deserialized"
    assert read_timeline(task_id, app_stack.redis(2)) is None
    assert app_stack.celery.AsyncResult(task_id).state == "PENDING"


def test_malformed_json_body_is_quarantined_and_logged(app_stack: Stack) -> None:
    task_id = str(uuid.uuid4())
    publish(app_stack, b"{not json", "application/json", headers_for("app.tasks.workflows.process_item", task_id))
    wait_until(lambda: last_poison(app_stack, task_id), timeout=30, what="the undecodable body quarantined")
    assert last_poison(app_stack, task_id)["reason"] == "bad_body"
    assert task_id in worker_log(app_stack)
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


def _envelope(task_id: str, **top: Any) -> dict[str, Any]:
    """A valid kombu envelope of a process_item(3) task, as kombu's Redis transport stores it."""
    body = base64.b64encode(json.dumps([[3], {}, {"callbacks": None, "errbacks": None, "chain": None}]).encode())
    env: dict[str, Any] = {
        "body": body.decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers_for("app.tasks.workflows.process_item", task_id),
        "properties": {
            "correlation_id": task_id,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": "celery"},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    env.update(top)
    return env


# The items the issue names: each killed the worker (exit 1, crash loop) or blocked the queue for ever.
KNOWN_BAD: list[tuple[str, bytes, str]] = [
    ("null-properties", b'{"body": null, "properties": null}', "bad_properties"),
    ("str-properties", b'{"body": "x", "properties": "str"}', "bad_properties"),
    ("no-properties", b'{"body": "x"}', "bad_properties"),
    ("empty-properties", b'{"body": "x", "properties": {}}', "bad_properties"),
    ("tag-only", b'{"body": "x", "properties": {"delivery_tag": "t"}}', "bad_properties"),
    ("corrupt-base64", json.dumps(_envelope("corrupt-b64", body="%%%not base64%%%")).encode(), "bad_body_encoding"),
    ("no-task-id", json.dumps(_envelope("no-id", headers={"task": "app.tasks.workflows.process_item"})).encode(),
     "bad_headers"),
]  # fmt: skip


def worker_pids(stack: Stack) -> dict[str, int]:
    return {name: w.proc.pid for name, w in stack.workers.items()}


def push_and_settle(stack: Stack, item: bytes) -> None:
    """LPUSH ``item`` onto the default queue, wait until a worker has taken it off the list and a good task
    sent after it has run (so the item had its effect), and check no worker died or was replaced."""
    before = worker_pids(stack)
    broker = stack.redis(0)
    broker.lpush(stack.queue, item)
    wait_until(lambda: broker.llen(stack.queue) == 0, timeout=30, what="the item taken off the queue")
    assert_still_consuming(stack)
    assert worker_pids(stack) == before, "a worker was replaced"


@pytest.mark.parametrize(("item", "reason"), [(i, r) for _n, i, r in KNOWN_BAD], ids=[n for n, _i, _r in KNOWN_BAD])
def test_envelope_shaped_poison_is_quarantined_and_the_worker_goes_on(
    app_stack: Stack, item: bytes, reason: str
) -> None:
    # Before: the first two and the corrupt base64 body stopped the worker (exit 1, and every fresh worker
    # died on the item again); the next three looped on "Connection to broker lost" with no task running.
    broker = app_stack.redis(0)
    before = int(broker.hget(f"{app_stack.queue}.poison.counts", reason) or 0)
    push_and_settle(app_stack, item)
    assert broker.lindex(f"{app_stack.queue}.poison", 0) == item
    assert json.loads(broker.lindex(f"{app_stack.queue}.poison.why", 0))["reason"] == reason
    assert int(broker.hget(f"{app_stack.queue}.poison.counts", reason) or 0) == before + 1


MISSING = object()
PATHS = [
    ("body",), ("content-type",), ("content-encoding",), ("headers",), ("headers", "task"), ("headers", "id"),
    ("headers", "timelimit"), ("headers", "compression"), ("headers", "eta"), ("properties",),
    ("properties", "delivery_tag"), ("properties", "body_encoding"), ("properties", "delivery_info"),
    ("properties", "delivery_info", "exchange"), ("properties", "delivery_info", "routing_key"),
    ("properties", "priority"),
]  # fmt: skip
JUNK = st.one_of(
    st.just(MISSING),
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.lists(st.integers(0, 9), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
    st.sampled_from(["%%%", "eyJhIjo=", "W1tdLHt9LHt9XQ==", "application/x-yaml", "base64", "utf-16", "zlib"]),
)


@st.composite
def envelopes(draw: st.DrawFn) -> dict[str, Any]:
    """A valid envelope with one to three fields, at any level, missing, null, wrong-typed or corrupt."""
    env = _envelope(f"fuzz-{draw(st.integers(0, 10**9))}")
    for path in draw(st.lists(st.sampled_from(PATHS), min_size=1, max_size=3, unique=True)):
        node: Any = env
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            value = draw(JUNK)
            if value is MISSING:
                node.pop(path[-1], None)
            else:
                node[path[-1]] = value
    return env


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(env=envelopes())
@example(env={"body": None, "properties": None})
@example(env={"body": "x", "properties": "str"})
@example(env={"body": "x", "properties": {"delivery_tag": "t"}})
@example(env=_envelope("fuzz-corrupt", body="%%%"))
@example(env=_envelope("fuzz-no-info", properties={"delivery_tag": "t", "body_encoding": "base64"}))
@example(env=_envelope("fuzz-bad-limit", headers={**headers_for("app.tasks.workflows.process_item", "l"),
                                                  "timelimit": "soon"}))  # fmt: skip
def test_fuzzed_envelopes_never_stop_a_worker(app_stack: Stack, env: dict[str, Any]) -> None:
    """Whatever the envelope: the worker's main PID is unchanged, the item is quarantined with the reason the
    check gives (or, when the check finds nothing, Celery took it: it ran or Celery rejected it), and a good
    task sent after it completes."""
    broker = app_stack.redis(0)
    poisoned = broker.llen(f"{app_stack.queue}.poison")
    item = json.dumps(env).encode()
    push_and_settle(app_stack, item)
    expected = envelope_problem(env, ["application/json"])
    quarantined = broker.llen(f"{app_stack.queue}.poison") - poisoned
    if expected is not None:
        assert quarantined == 1
        assert json.loads(broker.lindex(f"{app_stack.queue}.poison.why", 0))["reason"] == expected[0]
    else:  # Celery's to run or reject; anything it raised on instead is quarantined, never fatal
        assert quarantined == 0 or json.loads(broker.lindex(f"{app_stack.queue}.poison.why", 0))["reason"] == (
            "consumer_error"
        )
