"""``Idempotency-Key`` on POST endpoints: a client retrying a 503 or a timeout gets the original answer (the
same task ids) instead of a second dispatch.

Semantics (after Stripe's):

- A key is scoped by method and path: the same key on another endpoint is another key.
- The first request with a key claims it in the cache Redis (``SET NX``) and, if it answers 2xx, stores its
  status and body for ``API_IDEMPOTENCY_TTL_S``; a later request with the key and the same body gets that
  answer again, marked ``Idempotent-Replayed: true``, and dispatches nothing.
- The same key with a different body (JSON compared after parsing, so key order and spacing do not count)
  or query string is a 422: a key names one request, not a slot.
- While the first request is still running, the key answers 409 with ``Retry-After``.
- Any other answer (a 4xx, or a 503 because the broker stalled) is not stored: the key is released, so a
  retry runs the request again and dispatches. Release retries in the background until Redis answers: when
  the broker and the cache share a stalled Redis, the release lands once it recovers; until then a retry gets
  the 409.
- If the cache Redis does not answer within ``API_DISPATCH_TIMEOUT_S`` the request is a 503 and nothing ran.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from typing import Annotated, Any
from urllib.parse import parse_qsl

import redis.asyncio as aioredis
import structlog
from fastapi import Header
from redis.exceptions import RedisError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.asgi import json_messages, replaying
from app.api.dispatch import MAX_CANVAS_TASKS
from app.core.config import Settings, get_settings

log = structlog.get_logger("app.api.idempotency")

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255
# Compare-and-set / compare-and-delete: only the request that claimed a key may store or release it, so a
# request whose claim expired (it ran longer than the in-flight TTL) cannot overwrite a later one's record.
_FINISH = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then "
    "redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3]) return 1 end return 0"
)
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


def idempotency_key_header(
    idempotency_key: Annotated[
        str | None,
        Header(
            alias=HEADER,
            min_length=1,
            max_length=MAX_KEY_LENGTH,
            pattern=r"^[!-~]+$",  # visible ASCII, what ``valid_key`` accepts: the schema says the same rule
            description="Any unique string (a UUID): a retry with the same key and body gets the first answer "
            "and dispatches nothing; the same key with another body is a 422; 409 while the first is running",
        ),
    ] = None,
) -> str | None:
    """Declares the header in the OpenAPI schema; ``IdempotencyMiddleware`` does the work."""
    return idempotency_key


def valid_key(key: str) -> bool:
    return 0 < len(key) <= MAX_KEY_LENGTH and all(33 <= ord(c) <= 126 for c in key)


def fingerprint(query: bytes, body: bytes) -> str:
    """What makes two requests "the same": the query parameters and the body, JSON compared as data."""
    try:
        canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode()
    except ValueError:
        canonical = body
    params = json.dumps(sorted(parse_qsl(query.decode("latin-1"), keep_blank_values=True))).encode()
    return hashlib.sha256(params + b"\0" + canonical).hexdigest()


def record_key(method: str, path: str, key: str) -> str:
    return f"idempotency:{method} {path}:{hashlib.sha256(key.encode()).hexdigest()}"


class IdempotencyStore:
    """The records in the cache Redis, every call bounded by the dispatch timeout."""

    def __init__(self, settings: Settings) -> None:
        self.timeout = settings.api_dispatch_timeout_s
        self.ttl = settings.api_idempotency_ttl_s
        # Longer than the slowest request (the largest canvas' dispatch deadline plus the database's time),
        # short enough that a claim left by a crashed API frees itself.
        self.in_flight_ttl = int(
            settings.api_dispatch_timeout_s + settings.api_dispatch_timeout_per_task_s * MAX_CANVAS_TASKS + 60
        )
        self.redis = aioredis.Redis.from_url(
            settings.cache_url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout
        )
        self._finish = self.redis.register_script(_FINISH)
        self._release = self.redis.register_script(_RELEASE)
        self._cleanups: set[asyncio.Task[None]] = set()

    async def _bounded(self, coro: Any) -> Any:
        return await asyncio.wait_for(coro, self.timeout)

    async def claim(self, key: str, claim: str) -> dict[str, Any] | None:
        """None if this request now holds ``key``; else the record that holds it."""
        for _ in range(3):  # the record may expire between SET NX and GET: then claim again
            if await self._bounded(self.redis.set(key, claim, nx=True, ex=self.in_flight_ttl)):
                return None
            raw = await self._bounded(self.redis.get(key))
            if raw is not None:
                return dict(json.loads(raw))
        raise TimeoutError(f"could not claim {key}: it kept expiring")

    async def finish(self, key: str, claim: str, record: dict[str, Any]) -> bool:
        return bool(await self._bounded(self._finish(keys=[key], args=[claim, json.dumps(record), self.ttl])))

    def release(self, key: str, claim: str) -> None:
        """Give the key back, in the background and until Redis answers (see the module docstring)."""
        task = asyncio.get_running_loop().create_task(self._release_until_done(key, claim))
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    async def _release_until_done(self, key: str, claim: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.in_flight_ttl
        delay = 0.05
        answered = 0
        while loop.time() < deadline:
            try:
                await self._bounded(self._release(keys=[key], args=[claim]))
                answered += 1
                # Once more a moment later: a claim whose SET NX timed out may still be sitting in the stalled
                # server's socket buffer and land after the first release.
                if answered == 2:
                    return
                delay = 1.0
            except (RedisError, OSError, TimeoutError) as exc:
                log.warning("idempotency key release pending", error=repr(exc))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def close(self) -> None:
        for task in list(self._cleanups):
            task.cancel()
        await self.redis.aclose()


def _error(status: int, message: str, **extra: Any) -> list[Message]:
    detail = [{"loc": ["header", HEADER], "msg": message, "type": extra.pop("type", "idempotency")}]
    headers = [(b"retry-after", str(extra["retry_after"]).encode())] if "retry_after" in extra else []
    return json_messages(status, {"message": f"{HEADER}: {message}", "detail": detail}, headers)


class IdempotencyMiddleware:
    """Applies the module's semantics to every POST under /api/ that carries the header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope.get("headers") or ()) if scope["type"] == "http" else {}
        raw_key = headers.get(b"idempotency-key")
        if raw_key is None or scope["method"] != "POST" or not scope["path"].startswith("/api/"):
            await self.app(scope, receive, send)
            return
        key = raw_key.decode("latin-1")
        if not valid_key(key):
            await self._answer(
                send, _error(422, f"must be 1 to {MAX_KEY_LENGTH} visible ASCII characters", type="value_error")
            )
            return
        store: IdempotencyStore | None = getattr(scope["app"].state, "idempotency", None)
        if store is None:  # the app runs without its lifespan: nothing to keep records in
            store = scope["app"].state.idempotency = IdempotencyStore(get_settings())

        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
        request_print = fingerprint(scope.get("query_string", b""), body)
        rkey = record_key(scope["method"], scope["path"], key)
        claim = json.dumps({"state": "in_flight", "owner": uuid.uuid4().hex, "fingerprint": request_print})

        try:
            held = await store.claim(rkey, claim)
        except (RedisError, OSError, TimeoutError) as exc:
            log.error("idempotency store unavailable", error=repr(exc))
            store.release(rkey, claim)  # the SET NX may land when Redis wakes up
            await self._answer(
                send,
                _error(503, f"the idempotency store did not answer within {store.timeout:g}s; nothing was "
                       "dispatched, retry with the same key", retry_after=5),
            )  # fmt: skip
            return
        if held is not None:
            await self._answer(send, self._held(held, request_print))
            return

        status, captured, content_type = 500, b"", b"application/json"
        stored = False

        async def store_answer() -> None:
            record = {
                "state": "done",
                "fingerprint": request_print,
                "status": status,
                "content_type": content_type.decode("latin-1"),
                "body": captured.decode(),
            }
            try:
                if not await store.finish(rkey, claim, record):
                    log.warning("idempotency claim expired before the answer was stored", path=scope["path"])
            except (RedisError, OSError, TimeoutError) as exc:
                # The client gets its answer; a retry after the claim expires would dispatch again.
                log.error("idempotency answer not stored", error=repr(exc))

        async def capture(message: Message) -> None:
            nonlocal status, captured, content_type, stored
            if message["type"] == "http.response.start":
                status = message["status"]
                content_type = dict(message.get("headers") or ()).get(b"content-type", content_type)
            elif message["type"] == "http.response.body":
                captured += message.get("body", b"")
                if not message.get("more_body", False) and 200 <= status < 300:
                    # Stored before the client has the last byte: a retry sent the moment the answer arrives
                    # must find it replayable, not still in flight (a 409).
                    await store_answer()
                    stored = True
            await send(message)

        try:
            await self.app(scope, replaying(body, receive), capture)
        finally:
            if 200 <= status < 300:
                if not stored:
                    await store_answer()
            else:
                store.release(rkey, claim)

    @staticmethod
    def _held(record: dict[str, Any], request_print: str) -> list[Message]:
        if record.get("fingerprint") != request_print:
            return _error(
                422, "this key was already used with a different request body or query on this endpoint; use a "
                "new key for a new request", type="idempotency_key_reused",
            )  # fmt: skip
        if record.get("state") != "done":
            return _error(409, "a request with this key is still in progress; retry shortly", retry_after=1)
        payload = str(record["body"]).encode()
        return [
            {
                "type": "http.response.start",
                "status": int(record["status"]),
                "headers": [
                    (b"content-type", str(record["content_type"]).encode("latin-1")),
                    (b"content-length", str(len(payload)).encode()),
                    (b"idempotent-replayed", b"true"),
                ],
            },
            {"type": "http.response.body", "body": payload},
        ]

    @staticmethod
    async def _answer(send: Send, messages: list[Message]) -> None:
        for message in messages:
            await send(message)
