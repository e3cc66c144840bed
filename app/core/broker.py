"""A Redis transport that survives poison items on the queue list, and loses nothing.

kombu's Redis channel pops an item (BRPOP/RPOP) and JSON-decodes it with no guard: an item that is not a
kombu envelope (garbage pushed by another program, a truncated write) raises out of the consumer and Celery
stops the worker with "Unrecoverable error". Every worker that pops such an item dies, and the item is gone.
This channel decodes defensively: an undecodable item is logged and pushed onto ``<queue>.poison`` (a plain
Redis list, for a person to inspect) and the worker carries on. Messages that decode but are still bad
(pickle content, a broken body, an unknown task name) are Celery's to reject, and it does, with a log line.

Selected through Celery's ``broker_transport`` for redis:// brokers (app/core/celery.py). It overrides two
kombu internals (``_brpop_read``, ``_get``); kombu is pinned exactly and tests/app/test_hostile.py covers it.
"""

from __future__ import annotations

from typing import Any

import structlog
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

log = structlog.get_logger("app.broker")
POISON_SUFFIX = ".poison"


class PoisonSafeChannel(kombu_redis.Channel):
    def _decode_or_quarantine(self, queue: str, item: bytes) -> dict[str, Any] | None:
        try:
            message = loads(bytes_to_str(item))
            if isinstance(message, dict) and "body" in message:
                return message
            reason = "not a kombu message envelope"
        except (ValueError, TypeError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            reason = repr(exc)
        key = queue + POISON_SUFFIX
        with self.conn_or_acquire() as client:
            client.lpush(key, item)
        log.error("poison item quarantined", queue=queue, dead_letter=key, reason=reason, preview=repr(item[:120]))
        return None

    def _brpop_read(self, **options: Any) -> bool:
        try:
            try:
                reply = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                self.client.connection.disconnect()  # reconnect on the next poll
                raise
            if not reply:
                raise kombu_redis.Empty()
            dest, item = reply
            queue = bytes_to_str(dest).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(queue)
            message = self._decode_or_quarantine(queue, item)
            if message is None:
                raise kombu_redis.Empty()
            self.connection._deliver(message, queue)
            return True
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()

    def _get(self, queue: str) -> dict[str, Any]:
        with self.conn_or_acquire() as client:
            for pri in self.priority_steps:
                while item := client.rpop(self._q_for_pri(queue, pri)):
                    message = self._decode_or_quarantine(queue, item)
                    if message is not None:
                        self._maybe_update_queues_expire(client, queue)
                        return message
            self._maybe_update_queues_expire(client, queue)
            raise kombu_redis.Empty()


class PoisonSafeTransport(kombu_redis.Transport):
    Channel = PoisonSafeChannel


TRANSPORT = f"{__name__}:PoisonSafeTransport"
