"""The broker view: what a broker holds, read the same way by chaos, the bench and the events exporter.

Questions it answers, on Redis and on RabbitMQ alike: which task ids are queued, which are held
unacknowledged (and, on Redis, when each would be restored), how deep the queue is, and whether the broker is
quiet (nothing queued, nothing held). "Could not read the broker" is a third answer: every method raises
``BrokerUnreadable`` then, and callers record it as such, never as "quiet" or "empty".

Redis: the queue is a list; kombu keeps fetched, unacknowledged messages in the ``unacked`` hash (restored
once older than the visibility timeout, scored in ``unacked_index``); the reference app's reliable fetch
(app/core/broker.py) keeps a message between fetch and that record in a per-consumer inflight list, given
back once the consumer's heartbeat in ``kombu.inflight`` is older than the visibility timeout.
RabbitMQ: ready messages are peeked through the management API (and requeued); only a live consumer holds a
message unacknowledged, and a dead consumer's come back at once.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

import httpx
import redis

from app.core.broker import INFLIGHT_INDEX, INFLIGHT_SEP, POISON_COUNTS_SUFFIX, POISON_REASONS
from lab.errors import BrokerUnreadable

BROKERS = ("redis", "rabbitmq")  # what a Stack can run as its Celery broker
UNACKED_HASH, UNACKED_INDEX = "unacked", "unacked_index"  # kombu's Redis transport defaults
# kombu's restore sweep runs under this lock (SET NX with a 300 s expiry): a worker killed while holding it
# leaves every sweep skipping until it expires.
UNACKED_MUTEX = "unacked_mutex"


@dataclass(frozen=True)
class Held:
    """A message held unacknowledged: its task id, and when the broker would give it back (None: as soon as
    its consumer is gone, or unknown)."""

    task_id: str
    restore_at: float | None = None


class BrokerView(Protocol):
    queue: str

    def queued_ids(self) -> set[str]: ...
    def held(self) -> list[Held]: ...
    def depth(self) -> int: ...
    def quiet(self) -> bool: ...
    def version(self) -> str: ...
    def restore_lock_s(self) -> float | None: ...


def message_id(raw: bytes | str | dict[str, object]) -> str | None:
    """The task id of a kombu envelope (JSON text or already decoded); None for anything else."""
    with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
        data = json.loads(raw) if isinstance(raw, (bytes, str)) else raw
        return str(data["headers"]["id"])  # type: ignore[index]
    return None


class RedisBrokerView:
    def __init__(self, client: Callable[[], redis.Redis], queue: str, visibility_timeout: float) -> None:
        self._client = client
        self.queue = queue
        self.visibility_timeout = visibility_timeout

    @contextlib.contextmanager
    def _conn(self) -> Iterator[redis.Redis]:
        client = self._client()
        try:
            yield client
        except redis.RedisError as exc:
            raise BrokerUnreadable(f"broker unreadable: {exc}") from None
        finally:
            client.close()

    def _inflight_keys(self, client: redis.Redis) -> list[bytes]:
        return list(client.scan_iter(f"{self.queue}{INFLIGHT_SEP}*"))

    def queued_ids(self) -> set[str]:
        with self._conn() as client:
            return {i for raw in client.lrange(self.queue, 0, -1) if (i := message_id(raw))}

    def held(self) -> list[Held]:
        with self._conn() as client:
            out = []
            stamps = dict(client.zrange(UNACKED_INDEX, 0, -1, withscores=True))
            for tag, raw in client.hgetall(UNACKED_HASH).items():
                with contextlib.suppress(ValueError, IndexError, TypeError):
                    if i := message_id(json.loads(raw)[0]):
                        since = stamps.get(tag)
                        out.append(Held(i, None if since is None else since + self.visibility_timeout))
            pairs = client.zrange(INFLIGHT_INDEX, 0, -1, withscores=True)
            beats = {k.decode() if isinstance(k, bytes) else k: v for k, v in pairs}
            for key in self._inflight_keys(client):
                name = key.decode()
                beat = beats.get(name)
                restore = None if beat is None else beat + self.visibility_timeout
                out.extend(Held(i, restore) for raw in client.lrange(key, 0, -1) if (i := message_id(raw)))
            return out

    def depth(self) -> int:
        with self._conn() as client:
            return int(client.llen(self.queue))

    def poison_counts(self) -> dict[str, int]:
        """Items the transport quarantined from this queue, by reason (app/core/broker.py), every reason
        listed (0 when none): what ``celery_lab_poison_total`` reports."""
        with self._conn() as client:
            raw = client.hgetall(self.queue + POISON_COUNTS_SUFFIX)
        counts = {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}
        return {reason: counts.get(reason, 0) for reason in sorted({*POISON_REASONS, *counts})}

    def quiet(self) -> bool:
        with self._conn() as client:
            inflight = sum(int(client.llen(k)) for k in self._inflight_keys(client))
            return int(client.llen(self.queue)) == 0 and int(client.hlen(UNACKED_HASH)) == 0 and inflight == 0

    def version(self) -> str:
        """The server's version (INFO server), for the records a measurement is published with."""
        with self._conn() as client:
            return f"Redis {client.info('server')['redis_version']}"

    def restore_lock_s(self) -> float | None:
        """Seconds left on kombu's restore-sweep lock, None when nobody holds it. Held past a sweep's few
        milliseconds, it means a worker died inside a sweep: no parked message comes back until it expires."""
        with self._conn() as client:
            ms = int(client.pttl(UNACKED_MUTEX))
        return None if ms < 0 else round(ms / 1000, 1)

    def clear(self) -> int:
        """Drop every message of the queue, queued or held (unacked, inflight); how many went. Between two
        matrix cells on one Stack: a cell's parked messages would otherwise be restored into a later one."""
        with self._conn() as client:
            inflight = self._inflight_keys(client)
            held = int(client.hlen(UNACKED_HASH)) + sum(int(client.llen(k)) for k in inflight)
            dropped = int(client.llen(self.queue)) + held
            # The sweep lock too: a worker killed inside a sweep would otherwise block the next cell's restores.
            client.delete(self.queue, UNACKED_HASH, UNACKED_INDEX, UNACKED_MUTEX, *inflight)
            return dropped

    def fetching_clients(self) -> list[tuple[int, str]]:
        """(client port, command) of every connection blocked in a fetch (BRPOP/BLMOVE), from CLIENT LIST."""
        with self._conn() as client:
            return [
                (int(c["addr"].rsplit(":", 1)[1]), str(c.get("cmd")))
                for c in client.client_list()
                if c.get("cmd") in {"brpop", "blmove"} and "b" in c.get("flags", "")
            ]


class RabbitBrokerView:
    """Through the management API (``management_url``, with its credentials); ``held_by`` asks the live
    workers which ids they hold (``celery inspect``), since on RabbitMQ only a live consumer holds any."""

    def __init__(
        self,
        management_url: str,
        auth: tuple[str, str],
        queue: str,
        held_by: Callable[[], set[str]] | None = None,
        stats_interval_s: float = 0.25,
    ) -> None:
        self.url = management_url.rstrip("/")
        self.auth = auth
        self.queue = queue
        self._held_by = held_by
        self.stats_interval_s = stats_interval_s

    def _queue_url(self) -> str:
        return f"{self.url}/api/queues/%2F/{quote(self.queue, safe='')}"

    def _counts(self) -> tuple[int, int]:
        """(ready, unacknowledged); (0, 0) when the queue does not exist."""
        try:
            resp = httpx.get(self._queue_url(), auth=self.auth, timeout=5)
            if resp.status_code == 404:
                return 0, 0
            resp.raise_for_status()
            data = resp.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise BrokerUnreadable(f"broker unreadable: {exc}") from None
        return int(data.get("messages_ready", 0)), int(data.get("messages_unacknowledged", 0))

    def queued_ids(self) -> set[str]:
        """Ids of the ready messages, read and requeued at once (the management API's get with
        ack_requeue_true): nothing is lost, though a peeked message is marked redelivered."""
        try:
            resp = httpx.post(
                f"{self._queue_url()}/get",
                auth=self.auth,
                json={"count": 100_000, "ackmode": "ack_requeue_true", "encoding": "auto", "truncate": 1},
                timeout=30,
            )
            if resp.status_code == 404:
                return set()
            resp.raise_for_status()
            messages = resp.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise BrokerUnreadable(f"broker unreadable: {exc}") from None
        headers = [m.get("properties", {}).get("headers", {}) or {} for m in messages]
        return {str(h["id"]) for h in headers if h.get("id")}

    def held(self) -> list[Held]:
        if self._held_by is None:
            return []
        try:
            return [Held(i) for i in sorted(self._held_by())]
        except Exception as exc:  # inspect over a broken connection: kombu/amqp raise many types
            raise BrokerUnreadable(f"broker unreadable (inspect): {exc!r}") from None

    def depth(self) -> int:
        return self._counts()[0]

    def restore_lock_s(self) -> float | None:
        """RabbitMQ has no restore sweep, so no lock to be left held."""
        return None

    def version(self) -> str:
        try:
            resp = httpx.get(f"{self.url}/api/overview", auth=self.auth, timeout=5)
            resp.raise_for_status()
            data = resp.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise BrokerUnreadable(f"broker unreadable: {exc}") from None
        return f"RabbitMQ {data.get('rabbitmq_version', '?')} (Erlang {data.get('erlang_version', '?')})"

    def quiet(self) -> bool:
        if self._counts() != (0, 0):
            return False
        # The management figures lag by up to a statistics interval: a zero counts once a fresher one agrees.
        time.sleep(2 * self.stats_interval_s)
        return self._counts() == (0, 0)


class AmqpDepthView:
    """Queue depth over AMQP itself (a passive queue declare), for processes that have a broker URL and no
    management API, like the events exporter. Only ``depth`` is answerable this way."""

    def __init__(self, connection: Callable[[], Any], queue: str) -> None:
        self._connection = connection
        self.queue = queue

    def depth(self) -> int:
        try:
            with self._connection() as conn:
                return int(conn.default_channel.queue_declare(self.queue, passive=True).message_count)
        except Exception as exc:  # kombu/amqp raise NotFound, OperationalError, OSError, ...
            raise BrokerUnreadable(f"queue {self.queue} unreadable: {exc!r}") from None
