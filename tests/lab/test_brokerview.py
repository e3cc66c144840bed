"""The broker view: what a real broker holds, and "could not read" as its own answer, never "quiet"."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
import redis

from lab.brokerview import Held, RabbitBrokerView, RedisBrokerView, message_id
from lab.errors import BrokerUnreadable
from lab.procs import free_port, start_redis_server


def envelope(task_id: str) -> bytes:
    return json.dumps({"body": "", "headers": {"id": task_id}, "properties": {}}).encode()


def test_message_id_reads_envelopes_and_nothing_else() -> None:
    assert message_id(envelope("abc")) == "abc"
    for junk in (b"\xff", b"[]", b'{"headers": null}', b"{}"):
        assert message_id(junk) is None


def test_an_unreachable_redis_is_unreadable_not_quiet() -> None:
    port = free_port()  # nothing listens there
    view = RedisBrokerView(lambda: redis.Redis(port=port, socket_connect_timeout=0.5), "celery", 60)
    # Before: "cannot read" answered True (quiet), so a run was reported settled without counting late copies.
    for ask in (view.quiet, view.queued_ids, view.held, view.depth):
        with pytest.raises(BrokerUnreadable):
            ask()


def test_an_unreachable_rabbitmq_management_is_unreadable_not_quiet() -> None:
    view = RabbitBrokerView(f"http://127.0.0.1:{free_port()}", ("guest", "guest"), "celery")
    for ask in (view.quiet, view.queued_ids, view.depth):
        with pytest.raises(BrokerUnreadable):
            ask()


@pytest.mark.stack
def test_redis_view_reads_queued_unacked_and_inflight_with_restore_times(tmp_path: Path) -> None:
    proc, port = start_redis_server("redis", tmp_path / "r", tmp_path / "logs" / "redis.log")
    client = redis.Redis(port=port)
    try:
        view = RedisBrokerView(lambda: redis.Redis(port=port), "celery", visibility_timeout=60)
        assert view.quiet() and view.depth() == 0
        queued, parked, fetched = (str(uuid.uuid4()) for _ in range(3))
        client.lpush("celery", envelope(queued))
        since = time.time() - 5
        client.hset("unacked", "tag1", json.dumps([json.loads(envelope(parked)), "", "celery"]))
        client.zadd("unacked_index", {"tag1": since})
        client.rpush("celery.inflight.c1", envelope(fetched))
        client.zadd("kombu.inflight", {"celery.inflight.c1": since})
        assert view.queued_ids() == {queued}
        assert view.depth() == 1
        assert sorted(view.held(), key=lambda h: h.task_id) == sorted(
            [Held(parked, since + 60), Held(fetched, since + 60)], key=lambda h: h.task_id
        )
        assert not view.quiet()
        assert view.restore_lock_s() is None
        client.set("unacked_mutex", "token", px=300_000)  # what a worker killed inside a sweep leaves
        assert 299 < view.restore_lock_s() <= 300
        assert view.version().startswith("Redis ")
        # clear(): queue, unacked store, inflight lists and the sweep lock, so a later matrix cell starts clean.
        assert view.clear() == 3
        assert view.quiet() and view.restore_lock_s() is None and view.held() == []
    finally:
        client.close()
        proc.stop(timeout=5)
