"""A Redis transport that survives poison items on the queue list, and loses nothing.

**Poison items.** kombu's Redis channel pops an item (BRPOP/RPOP), JSON-decodes it and builds a message from
it with no guard: an item that is not a kombu envelope (garbage pushed by another program, a truncated write,
an envelope with a null or wrong-typed field, a corrupt base64 body) raises out of the consumer. Celery then
stops the worker ("Unrecoverable error"), or, for a KeyError, reconnects and pops the same item again for
ever; every fresh worker dies on it. This channel checks each item before kombu sees it (``envelope_problem``:
everything kombu's ``Message``, its QoS and Celery's task handler index, the body decodable in its content
type, that content type accepted) and moves a bad one to ``<queue>.poison`` with a record on
``<queue>.poison.why`` (same position: ``{"at", "reason", "detail", "task_id"}``) and a count per reason in the
hash ``<queue>.poison.counts`` (the exporter's ``celery_lab_poison_total{queue,reason}``), in one MULTI; the
worker goes on with the next item. An item that passes and still makes the consumer raise (something no check
foresaw) is quarantined the same way (reason ``consumer_error``) instead of killing the worker. A message that
decodes but names an unregistered task, or carries wrong arguments, is Celery's to reject, as it does. To
replay a fixed item: ``LMOVE <queue>.poison <queue> LEFT LEFT`` (and ``LPOP <queue>.poison.why``).

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

import base64
import binascii
import contextlib
import json
import time
import uuid
from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any

import redis
import structlog
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

log = structlog.get_logger("app.broker")
POISON_SUFFIX = ".poison"
POISON_WHY_SUFFIX = ".poison.why"  # a record per quarantined item, at the same position as the item
POISON_COUNTS_SUFFIX = ".poison.counts"  # hash: reason -> items quarantined for it
# Every reason an item is quarantined for: a fixed set, so the metric's labels stay bounded.
POISON_REASONS = (
    "not_json",
    "not_envelope",
    "bad_properties",
    "bad_headers",
    "bad_body_encoding",
    "bad_body",
    "content_type",
    "consumer_error",
)
INFLIGHT_SEP = ".inflight."
INFLIGHT_INDEX = "kombu.inflight"  # sorted set: inflight list -> when its consumer last fetched
HEARTBEAT_EVERY_S = 1.0


def _is_str(value: object) -> bool:
    return isinstance(value, str) and bool(value)


def envelope_problem(message: object, accept: Collection[str] | None = None) -> tuple[str, str] | None:
    """Why kombu (or Celery's task handler) cannot take ``message``, a decoded queue item, as
    ``(reason, detail)``; None when it can. Pure: the rules are what kombu's ``Message``, the Redis QoS and
    restore, and Celery's ``Request`` index without a guard (kombu 5.7, Celery 5.7)."""
    if not isinstance(message, dict) or "body" not in message:
        return "not_envelope", f"a {type(message).__name__}, not an object with a body"
    props = message.get("properties")
    if not isinstance(props, dict):
        return "bad_properties", f"properties is a {type(props).__name__}"
    if not _is_str(props.get("delivery_tag")):
        return "bad_properties", "properties.delivery_tag is not a non-empty string"
    info = props.get("delivery_info")
    if not isinstance(info, dict) or not all(isinstance(info.get(k), str) for k in ("exchange", "routing_key")):
        return "bad_properties", "properties.delivery_info needs string exchange and routing_key"
    headers = message.get("headers")
    if not isinstance(headers, dict):
        return "bad_headers", f"headers is a {type(headers).__name__}"
    ctype, cenc = message.get("content-type"), message.get("content-encoding")
    if not _is_str(ctype) or not (cenc is None or isinstance(cenc, str)):
        return "content_type", "content-type (and content-encoding) must be strings"
    if accept is not None and ctype not in accept:
        return "content_type", f"content type {ctype!r} is not accepted (accept_content: {sorted(accept)})"
    body = message["body"]
    if not isinstance(body, str):
        return "bad_body", f"body is a {type(body).__name__}, not a string"
    encoding = props.get("body_encoding")
    raw: bytes
    if encoding in (None, "utf-8"):
        raw = body.encode("utf-8", "surrogatepass")
    elif encoding == "base64":
        try:
            raw = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError) as exc:
            return "bad_body_encoding", f"body is not base64: {exc}"
    else:
        return "bad_body_encoding", f"unknown body_encoding {encoding!r}"
    if headers.get("compression") is not None:
        return None  # compressed: kombu decompresses it, and a failure there is a decode error Celery rejects
    if ctype == "application/json":
        try:
            # kombu hands "binary" bodies to the JSON decoder as bytes, which reads them as UTF-8.
            text = raw.decode("utf-8" if cenc in (None, "binary", "ascii-8bit") else cenc)
            payload = json.loads(text)
        except (UnicodeDecodeError, LookupError, ValueError) as exc:
            return "bad_body", f"body is not JSON: {exc}"
        if "task" in headers:  # Celery's protocol 2: Request indexes these before anything can reject it
            if not _is_str(headers.get("task")) or not _is_str(headers.get("id")):
                return "bad_headers", "a task message needs string headers task and id"
            if not (isinstance(payload, list) and len(payload) == 3 and isinstance(payload[0], list)):
                return "bad_body", "a task message's body is [args, kwargs, embed]"
            if not isinstance(payload[1], dict) or not isinstance(payload[2], dict | None):
                return "bad_body", "a task message's body is [args, kwargs, embed]"
            limits = headers.get("timelimit")
            if limits is not None and not (
                isinstance(limits, list)
                and len(limits) == 2
                and all(v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in limits)
            ):
                return "bad_headers", "headers.timelimit is [soft, hard] seconds or null"
    return None


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
    accept_content: list[str] | None = None  # content types the app accepts (None: any); others are poison
    from_transport_options = (*kombu_redis.Channel.from_transport_options, "reliable_fetch", "accept_content")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._inflight_id = uuid.uuid4().hex
        self._move_from: str | None = None  # the queue of a pending BLMOVE, None for a pending BRPOP
        self._moved_from: set[str] = set()  # queues this channel has inflight lists for
        self._heartbeat_at = 0.0
        self._recover_inflight = False  # a fetch reply was lost with its connection
        self._warned_fallback = False
        self._no_ack_queues: set[str] = set()  # consumed without acks (reply queues): nothing to keep inflight

    # --- consumers -----------------------------------------------------------------------------------------
    def basic_consume(self, queue: str, no_ack: bool, *args: Any, **kwargs: Any) -> Any:
        if no_ack:
            self._no_ack_queues.add(queue)
        return super().basic_consume(queue, no_ack, *args, **kwargs)

    def _basic_cancel(self, consumer_tag: str) -> Any:
        queue = self._tag_to_queue.get(consumer_tag)
        ret = super()._basic_cancel(consumer_tag)
        if queue is not None:
            self._no_ack_queues.discard(queue)
            if queue in self._moved_from and queue not in self.active_queues:
                # The channel may live on in a pool: drop this consumer's inflight list and its heartbeat now,
                # or the index keeps an entry per cancelled consumer until the visibility timeout.
                self._moved_from.discard(queue)
                with contextlib.suppress(redis.RedisError, OSError), self.conn_or_acquire() as client:
                    _give_back(client, self._inflight_key(queue), queue, forget=True)
        return ret

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
            and not (self._no_ack_queues & set(self.active_queues))
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
        tag = message["properties"]["delivery_tag"]
        self.qos.last_appended = None
        try:
            taken = self._deliver_guarded(message, queue, item)
        except BaseException:
            # A connection error mid-delivery. Recorded as unacked by kombu's QoS.append already: the
            # visibility timeout covers it, done with the inflight copy. Not yet: put it back where the next
            # fetch finds it.
            recorded = self.qos.last_appended == tag
            self._settle_inflight(inflight, item, requeue_to=None if recorded else queue)
            raise
        # Handed over (to a no_ack consumer such as a reply queue's, or recorded as unacked), or quarantined:
        # done with the inflight copy.
        self._settle_inflight(inflight, item)
        if not taken:
            raise kombu_redis.Empty()
        return True

    def _deliver_guarded(self, message: dict[str, Any], queue: str, item: bytes) -> bool:
        """Hand ``message`` to its consumer. When the consumer raises anything but a connection error (an item
        no check foresaw), quarantine it and return False, instead of letting the error stop the worker."""
        try:
            self.connection._deliver(message, queue)
        except (*self.connection_errors, *self.channel_errors):
            raise
        except Exception as exc:
            tag = message["properties"]["delivery_tag"]
            if tag in self.qos._delivered:
                self.qos.ack(tag)  # out of unacked: the poison list holds it now, nothing restores it
            self._quarantine(queue, item, "consumer_error", repr(exc)[:300], message)
            return False
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
        except (ValueError, TypeError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            self._quarantine(queue, item, "not_json", repr(exc)[:300])
            return None
        problem = envelope_problem(message, self.accept_content)
        if problem is None:
            return message
        self._quarantine(queue, item, *problem, message)
        return None

    def _quarantine(self, queue: str, item: bytes, reason: str, detail: str, message: object = None) -> None:
        headers = message.get("headers") if isinstance(message, dict) else None
        task_id = headers.get("id") if isinstance(headers, dict) and isinstance(headers.get("id"), str) else None
        record = {"at": datetime.now(UTC).isoformat(), "reason": reason, "detail": detail, "task_id": task_id}
        with self.conn_or_acquire() as client:
            pipe = client.pipeline(transaction=True)
            pipe.lpush(queue + POISON_SUFFIX, item)
            pipe.lpush(queue + POISON_WHY_SUFFIX, json.dumps(record))
            pipe.hincrby(queue + POISON_COUNTS_SUFFIX, reason, 1)
            pipe.execute()
        log.error(
            "poison item quarantined",
            queue=queue,
            dead_letter=queue + POISON_SUFFIX,
            reason=reason,
            detail=detail,
            task_id=task_id,
            preview=repr(item[:120]),
        )

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
            if message is None or not self._deliver_guarded(message, queue, item):
                raise kombu_redis.Empty()
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
