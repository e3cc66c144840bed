"""The reliable fetch of app/core/broker.py against a real redis-server, through kombu's own consumer loop.

The end-to-end proof (a worker SIGKILLed with a fetched message unread loses nothing, and the same with
kombu's BRPOP loses it) is tests/chaos: worker-kill-mid-fetch and control-brpop-fetch-window.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from kombu import Connection, Consumer, Exchange, Message, Queue

from app.core.broker import INFLIGHT_INDEX, INFLIGHT_SEP, POISON_REASONS, TRANSPORT, envelope_problem
from lab.procs import start_redis_server, wait_until

QUEUE = Queue("work", Exchange("work"), routing_key="work")


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    proc, port = start_redis_server("redis", tmp_path / "redis", tmp_path / "redis.log")
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.stop(timeout=5)


def connection(url: str, **options: object) -> Connection:
    opts = {"visibility_timeout": 2, "priority_steps": [0], **options}
    return Connection(url, transport=TRANSPORT, transport_options=opts)


def test_fetch_moves_through_an_inflight_list_into_unacked(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    seen: list[tuple[Message, list[bytes], int]] = []
    with connection(redis_url) as conn:
        conn.Producer().publish({"n": 1}, exchange=QUEUE.exchange, routing_key="work", declare=[QUEUE])

        def on_message(_body: object, message: Message) -> None:
            inflight = [k for k in client.scan_iter(f"work{INFLIGHT_SEP}*")]
            # During delivery: recorded as unacked, and (until the channel settles it) still inflight.
            seen.append((message, [i for k in inflight for i in client.lrange(k, 0, -1)], client.hlen("unacked")))

        with Consumer(conn, [QUEUE], callbacks=[on_message], accept=["json"]):
            conn.drain_events(timeout=5)
            message, inflight_items, unacked = seen[0]
            assert unacked == 1
            assert len(inflight_items) == 1, "the message was not fetched through an inflight list"
            keys = list(client.scan_iter(f"work{INFLIGHT_SEP}*"))
            assert all(client.llen(k) == 0 for k in keys), "delivered, yet still inflight"
            assert client.zcard(INFLIGHT_INDEX) == 1  # the consumer's heartbeat
            message.ack()
            assert client.hlen("unacked") == 0
    # A clean close leaves no inflight list and no heartbeat behind.
    assert client.zcard(INFLIGHT_INDEX) == 0
    assert not list(client.scan_iter(f"work{INFLIGHT_SEP}*"))
    client.close()


def test_a_dead_consumers_inflight_list_is_swept_back_to_its_queue(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    dead = f"work{INFLIGHT_SEP}deadbeef"
    client.lpush(dead, b"fetched-by-a-worker-that-died")
    client.zadd(INFLIGHT_INDEX, {dead: time.time() - 60})  # silent for longer than the visibility timeout
    alive = f"work{INFLIGHT_SEP}alive"
    client.lpush(alive, b"being-delivered-right-now")
    client.zadd(INFLIGHT_INDEX, {alive: time.time()})
    with connection(redis_url) as conn:
        restored = conn.default_channel.restore_orphaned_inflight()
    assert restored == 1
    assert client.lrange("work", 0, -1) == [b"fetched-by-a-worker-that-died"]
    assert client.llen(dead) == 0
    assert client.zscore(INFLIGHT_INDEX, dead) is None
    assert client.lrange(alive, 0, -1) == [b"being-delivered-right-now"]  # a live consumer's is left alone
    client.close()


def test_reliable_fetch_off_is_kombus_brpop(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    with connection(redis_url, reliable_fetch=False) as conn:
        conn.Producer().publish({"n": 1}, exchange=QUEUE.exchange, routing_key="work", declare=[QUEUE])
        got: list[Message] = []
        with Consumer(conn, [QUEUE], callbacks=[lambda _b, m: got.append(m)], accept=["json"]):
            conn.drain_events(timeout=5)
            got[0].ack()
    assert client.zcard(INFLIGHT_INDEX) == 0
    assert not list(client.scan_iter(f"work{INFLIGHT_SEP}*"))
    client.close()


def test_a_no_ack_consumer_gets_each_message_once(redis_url: str) -> None:
    """Reply queues (celery inspect, mingle) consume with no_ack: nothing is recorded as unacked, and the
    inflight copy must still go, or the reply comes back for ever (a worker hung in mingle showed it)."""
    client = redis.Redis.from_url(redis_url)
    with connection(redis_url) as conn:
        conn.Producer().publish({"n": 1}, exchange=QUEUE.exchange, routing_key="work", declare=[QUEUE])
        got: list[object] = []
        with Consumer(conn, [QUEUE], callbacks=[lambda body, _m: got.append(body)], accept=["json"], no_ack=True):
            conn.drain_events(timeout=5)
            with pytest.raises(TimeoutError):
                conn.drain_events(timeout=1.5)
    assert got == [{"n": 1}]
    assert client.llen("work") == 0
    assert client.hlen("unacked") == 0
    client.close()


@pytest.mark.stack
def test_the_stock_kombu_transport_is_really_stock(stack_factory) -> None:
    """CELERY_REDIS_TRANSPORT=kombu runs kombu's own Redis transport (what the matrix compares against): a
    worker fetches with BRPOP, and a garbage item on its queue stops it, as it stops a stock worker."""
    overrides = {"CELERY_REDIS_TRANSPORT": "kombu", "CELERY_BROKER_RELIABLE_FETCH": "false"}
    stack = stack_factory(workers=1, api=False, smtp=False, ai_stub=False, overrides=overrides)
    assert stack.celery.conf.broker_transport is None
    view = stack.broker_view()
    cmds = wait_until(lambda: {cmd for _port, cmd in view.fetching_clients()}, timeout=30, what="a blocked fetch")
    assert cmds == {"brpop"}
    worker = stack.workers["w1"]
    stack.redis().lpush(stack.queue, b"\xff not json")
    wait_until(lambda: not worker.proc.alive(), timeout=60, what="the stock worker to die on the poison item")
    assert "Unrecoverable error" in worker.proc.log_path.read_text(errors="replace")


@pytest.mark.stack
def test_pinging_workers_adds_nothing_to_the_inflight_index(stack_factory) -> None:
    """Reply queues are consumed without acks: nothing to keep inflight. Before: each ping's reply consumer
    fetched with BLMOVE and left an entry in kombu.inflight until the visibility-timeout sweep (1 h)."""
    stack = stack_factory(workers=1, api=False, smtp=False, ai_stub=False)
    client = stack.redis(0)
    wait_until(lambda: client.zcard(INFLIGHT_INDEX) >= 1, timeout=30, what="the worker's own consumer")
    before = client.zcard(INFLIGHT_INDEX)
    for _ in range(20):
        assert stack.celery.control.ping(timeout=1.0, limit=1)
    assert client.zcard(INFLIGHT_INDEX) == before
    assert {k.decode().split(INFLIGHT_SEP)[0] for k in client.zrange(INFLIGHT_INDEX, 0, -1)} == {stack.queue}


def _good() -> dict:
    body = base64.b64encode(json.dumps([[1], {}, {"callbacks": None}]).encode()).decode()
    return {
        "body": body,
        "content-type": "application/json",
        "content-encoding": "utf-8",
        "headers": {"task": "t.x", "id": "abc", "timelimit": [None, 10]},
        "properties": {
            "delivery_tag": "tag",
            "body_encoding": "base64",
            "delivery_info": {"exchange": "", "routing_key": "celery"},
        },
    }


def _with(path: tuple[str, ...], value: object) -> dict:
    env = _good()
    node = env
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        node.pop(path[-1])
    else:
        node[path[-1]] = value
    return env


@pytest.mark.parametrize(
    ("path", "value", "reason"),
    [
        (("properties",), None, "bad_properties"),
        (("properties",), "str", "bad_properties"),
        (("properties", "delivery_tag"), KeyError, "bad_properties"),
        (("properties", "delivery_tag"), 7, "bad_properties"),
        (("properties", "delivery_info"), None, "bad_properties"),
        (("properties", "delivery_info", "routing_key"), None, "bad_properties"),
        (("properties", "body_encoding"), "rot13", "bad_body_encoding"),
        (("body",), "%%% not base64", "bad_body_encoding"),
        (("body",), None, "bad_body"),
        (("body",), base64.b64encode(b"{not json").decode(), "bad_body"),
        (("body",), base64.b64encode(b'{"a": 1}').decode(), "bad_body"),  # not [args, kwargs, embed]
        (("body",), base64.b64encode(b"\xff\xfe").decode(), "bad_body"),
        (("headers",), None, "bad_headers"),
        (("headers",), [1], "bad_headers"),
        (("headers", "id"), KeyError, "bad_headers"),
        (("headers", "id"), 5, "bad_headers"),
        (("headers", "timelimit"), "soon", "bad_headers"),
        (("content-type",), None, "content_type"),
        (("content-type",), "application/x-python-serialize", "content_type"),
        (("content-encoding",), 5, "content_type"),
    ],
)
def test_envelope_problem_names_the_reason(path: tuple[str, ...], value: object, reason: str) -> None:
    assert envelope_problem(_good(), ["application/json"]) is None
    problem = envelope_problem(_with(path, value), ["application/json"])
    assert problem is not None and problem[0] == reason, problem
    assert problem[0] in POISON_REASONS


def test_envelope_problem_leaves_celerys_own_rejections_to_celery() -> None:
    # An unregistered task name or a body of the right shape with wrong arguments: Celery rejects those itself.
    assert envelope_problem(_with(("headers", "task"), "os.system"), ["application/json"]) is None
    assert envelope_problem(_with(("headers", "compression"), "application/x-gzip"), ["application/json"]) is None
    assert envelope_problem({"body": "x", "no": "properties"}, None) == ("bad_properties", "properties is a NoneType")
    assert envelope_problem([1, 2], None)[0] == "not_envelope"
