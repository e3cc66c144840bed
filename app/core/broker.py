"""A Redis transport that survives poison items on the queue list, and loses nothing.

**Poison items.** kombu's Redis channel pops an item (BRPOP/RPOP) and JSON-decodes it with no guard: an item
that is not a kombu envelope (garbage pushed by another program, a truncated write) raises out of the
consumer and Celery stops the worker with "Unrecoverable error". Every worker that pops such an item dies,
and the item is gone. This channel decodes defensively: an undecodable item is logged and pushed onto
``<queue>.poison`` (a plain Redis list, for a person to inspect) and the worker carries on. Messages that
decode but are still bad (pickle content, a broken body, an unknown task name) are Celery's to reject, and
it does, with a log line.

**Reliable fetch.** kombu takes a message off the list with BRPOP and only then, in a second command,
records it in the ``unacked`` hash that the visibility timeout restores from. A worker killed between the
two (the reply on its way, or unread in its socket) takes the message with it: acks_late loses a task.
The chaos lab measured it (about one worker SIGKILL in 15 lost one message) and reproduces it on demand
(chaos/experiments/control-brpop-fetch-window.json). With ``reliable_fetch`` (the default here) the channel
fetches with ``BLMOVE <queue> <queue>.inflight.<channel id>`` instead: Redis moves the message atomically to a
list of the consumer's own, the channel records it as unacked as kombu does, then removes it from that list.
A consumer that dies in between leaves it in its inflight list, and the next unacked sweep of any live worker
(``restore_visible``) moves the lists of consumers silent for longer than the visibility timeout back onto
their queues. At-least-once, as acks_late promises: the message may run twice, never zero times.
BLMOVE takes one source list, so reliable fetch applies when a channel consumes one queue and uses no
priority lists (``priority_steps`` [0], which app/core/celery.py sets with it); a worker consuming several
queues (``-Q a,b``, or a queue added with ``add_consumer``) falls back to kombu's BRPOP, with a warning in
its log. It needs Redis >= 6.2.

Selected through Celery's ``broker_transport`` for redis:// brokers (app/core/celery.py). It overrides
kombu internals (``_brpop_start``, ``_brpop_read``, ``_get``, ``close`` and the QoS sweep); kombu is pinned
exactly and tests/app/test_hostile.py and tests/chaos cover them.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from typing import Any

import redis
import structlog
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

log = structlog.get_logger("app.broker")
POISON_SUFFIX = ".poison"
INFLIGHT_SEP = ".inflight."
INFLIGHT_INDEX = "kombu.inflight"  # sorted set: inflight list -> when its consumer last fetched
HEARTBEAT_EVERY_S = 1.0


def _give_back(client: redis.Redis, inflight: str, queue: str, *, forget: bool = False) -> int:
    """Move an inflight list's messages back onto the consuming end of their queue; ``forget`` also drops the
    list from the heartbeat index. Returns how many moved."""
    moved = 0
    while client.lmove(inflight, queue, "RIGHT", "RIGHT") is not None:
        moved += 1
    if forget:
        client.zrem(INFLIGHT_INDEX, inflight)
    return moved


class ReliableQoS(kombu_redis.QoS):
    last_appended: str | None = None  # the delivery tag kombu last recorded as unacked

    def append(self, message: Any, delivery_tag: str) -> None:
        super().append(message, delivery_tag)
        self.last_appended = delivery_tag

    def restore_visible(self, start: int = 0, num: int = 10, interval: int = 10) -> None:
        super().restore_visible(start, num, interval)
        if (self._vrestore_count - 1) % (interval or 1) == 0:  # the same throttle as the unacked sweep
            self.channel.restore_orphaned_inflight()


class PoisonSafeChannel(kombu_redis.Channel):
    QoS = ReliableQoS
    reliable_fetch = True
    from_transport_options = (*kombu_redis.Channel.from_transport_options, "reliable_fetch")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._inflight_id = uuid.uuid4().hex
        self._move_from: str | None = None  # the queue of a pending BLMOVE, None for a pending BRPOP
        self._moved_from: set[str] = set()  # queues this channel has inflight lists for
        self._heartbeat_at = 0.0
        self._recover_inflight = False  # a fetch reply was lost with its connection
        self._warned_fallback = False

    # --- reliable fetch ------------------------------------------------------------------------------------
    def _inflight_key(self, queue: str) -> str:
        return f"{queue}{INFLIGHT_SEP}{self._inflight_id}"

    def _moves(self) -> bool:
        return (
            bool(self.reliable_fetch)
            and self.ack_emulation
            and not self.global_keyprefix
            and list(self.priority_steps) == [0]
            and len(self.active_queues) == 1
        )

    def _brpop_start(self, timeout: float | None = None) -> None:
        if not self._moves():
            self._move_from = None
            if self.reliable_fetch and len(self.active_queues) > 1 and not self._warned_fallback:
                self._warned_fallback = True
                log.warning(
                    "reliable fetch needs one queue per consumer; using kombu's BRPOP for these",
                    queues=sorted(self.active_queues),
                )
            return super()._brpop_start(timeout)
        timeout = self.brpop_timeout if timeout is None else timeout
        queues = self._queue_cycle.consume(1)
        if not queues:
            return None
        queue = queues[0]
        inflight = self._inflight_key(queue)
        if time.monotonic() - self._heartbeat_at > HEARTBEAT_EVERY_S:
            # Proof of life for the sweep: this consumer's inflight list is its own while it keeps fetching.
            with self.conn_or_acquire() as client:
                client.zadd(INFLIGHT_INDEX, {inflight: time.time()})
            self._heartbeat_at = time.monotonic()
        if self._recover_inflight:
            with self.conn_or_acquire() as client:
                if n := _give_back(client, inflight, queue):
                    log.warning("requeued messages whose fetch reply was lost with the connection", count=n)
            self._recover_inflight = False
        self._move_from = queue
        self._moved_from.add(queue)
        self._in_poll = self.client.connection
        self._brpop_sent_at = time.monotonic()
        self.client.connection.send_command("BLMOVE", queue, inflight, "RIGHT", "LEFT", timeout or 0)
        return None

    def _move_read(self, queue: str, **options: Any) -> bool:
        try:
            item = self.client.parse_response(self.client.connection, "BLMOVE", **options)
        except self.connection_errors:
            # The reply (a message Redis already moved) may have died with the connection: it is in this
            # channel's inflight list, which no sweep takes while the channel lives. Give it back first thing.
            self._recover_inflight = True
            self.client.connection.disconnect()  # reconnect on the next poll
            raise
        if not item:
            raise kombu_redis.Empty()
        inflight = self._inflight_key(queue)
        self._queue_cycle.rotate(queue)
        message = self._decode_or_quarantine(queue, item)
        if message is None:
            self._settle_inflight(inflight, item)
            raise kombu_redis.Empty()
        tag = message.get("properties", {}).get("delivery_tag")
        self.qos.last_appended = None
        delivered = False
        try:
            self.connection._deliver(message, queue)
            delivered = True
        finally:
            # Handed over (to a no_ack consumer such as a reply queue's, or recorded as unacked by kombu's
            # QoS.append, after which the visibility timeout covers it): done with the inflight copy. Failed
            # before it was recorded: put it back where the next fetch finds it.
            recorded = tag is not None and self.qos.last_appended == tag
            self._settle_inflight(inflight, item, requeue_to=None if delivered or recorded else queue)
        return True

    def _settle_inflight(self, inflight: str, item: bytes, requeue_to: str | None = None) -> None:
        with self.conn_or_acquire() as client:
            if requeue_to is None:
                client.lrem(inflight, 1, item)  # one command on the hot path (a MULTI/EXEC would be three)
            else:
                client.pipeline().rpush(requeue_to, item).lrem(inflight, 1, item).execute()

    def restore_orphaned_inflight(self) -> int:
        """Move the inflight lists of consumers silent for longer than the visibility timeout back onto their
        queues (where the next fetch takes them first). Under kombu's unacked mutex, like its own sweep."""
        restored = 0
        with self.conn_or_acquire() as client:
            stale = client.zrange(INFLIGHT_INDEX, 0, time.time() - self.visibility_timeout, byscore=True)
            if not stale:
                return 0
            try:
                with kombu_redis.Mutex(client, self.unacked_mutex_key, self.unacked_mutex_expire):
                    for raw in stale:
                        key = bytes_to_str(raw)
                        restored += _give_back(client, key, key.rsplit(INFLIGHT_SEP, 1)[0], forget=True)
            except kombu_redis.MutexHeld:
                return restored
        if restored:
            log.warning("restored messages a dead consumer had fetched", count=restored)
        return restored

    def close(self) -> None:
        try:
            if not self.closed and self._moved_from:
                if self._in_poll:  # read a pending fetch first, as kombu's close does
                    try:
                        self._brpop_read()
                    except kombu_redis.Empty:
                        pass
                    except Exception as exc:  # shutting down: _move_read has requeued the message
                        log.warning("fetch pending at close not delivered", error=repr(exc))
                # A clean close leaves nothing inflight: give back what is there, drop this channel's lists.
                with contextlib.suppress(redis.RedisError, OSError), self.conn_or_acquire() as client:
                    for queue in self._moved_from:
                        _give_back(client, self._inflight_key(queue), queue, forget=True)
        finally:
            super().close()

    # --- poison items --------------------------------------------------------------------------------------
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
            if self._move_from is not None:
                queue, self._move_from = self._move_from, None
                return self._move_read(queue, **options)
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
