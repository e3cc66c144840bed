"""lab/netproxy.py in front of a real redis-server: passes bytes, partitions, adds latency, resets."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from lab.commands import netproxy_argv
from lab.procs import Proc, free_port, start_redis_server, wait_until


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[tuple[redis.Redis, str]]:
    server, redis_port = start_redis_server("redis", tmp_path / "redis", tmp_path / "redis.log")
    port, control = free_port(), free_port()
    argv = netproxy_argv("127.0.0.1", port, f"127.0.0.1:{redis_port}", control)
    proxy = Proc("netproxy", argv, dict(os.environ), tmp_path / "netproxy.log").start()
    url = f"http://127.0.0.1:{control}"
    try:
        up = lambda: httpx.get(f"{url}/health", timeout=1).is_success  # noqa: E731
        wait_until(up, timeout=30, what="netproxy", abort=proxy.died)
        # No retries: the test must see what the network did, not redis-py hiding it.
        client = redis.Redis(port=port, socket_timeout=1.5, socket_connect_timeout=1.5, retry=Retry(NoBackoff(), 0))
        yield client, url
        client.close()
    finally:
        proxy.stop(timeout=5)
        server.stop(timeout=5)


def test_bytes_flow_through(proxied: tuple[redis.Redis, str]) -> None:
    client, url = proxied
    client.set("k", "v")
    assert client.get("k") == b"v"
    assert httpx.get(f"{url}/state").json()["bytes"] > 0


def test_a_partition_is_silence_and_heals(proxied: tuple[redis.Redis, str]) -> None:
    client, url = proxied
    client.ping()
    httpx.post(f"{url}/partition", json={"on": True}).raise_for_status()
    with pytest.raises(redis.TimeoutError):  # no error from the network: the reply just never comes
        client.ping()
    state = httpx.post(f"{url}/partition", json={"on": False}).json()
    assert state["partitioned"] is False and state["partitions"] == 1
    client.connection_pool.disconnect()  # redis-py drops a connection that timed out mid-command
    assert client.ping()


def test_latency_is_added(proxied: tuple[redis.Redis, str]) -> None:
    client, url = proxied
    client.ping()
    httpx.post(f"{url}/latency", json={"ms": 300}).raise_for_status()
    t0 = time.monotonic()
    client.ping()
    assert time.monotonic() - t0 >= 0.3 * 2 - 0.05  # once each way
    assert httpx.post(f"{url}/latency", json={"ms": -1}).status_code == 422


def test_reset_aborts_open_connections(proxied: tuple[redis.Redis, str]) -> None:
    client, url = proxied
    client.ping()
    before = client.client_id()
    state = httpx.post(f"{url}/reset").json()
    assert state["reset"] == 1
    # The pooled connection was reset under the client: redis-py notices and connects again, as a new client.
    assert client.client_id() != before
    assert httpx.get(f"{url}/state").json()["connections"] == state["connections"] + 1
