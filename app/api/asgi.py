"""Pieces the pure ASGI middlewares (body limit, idempotency) share: a JSON answer as ASGI messages, and a
``receive`` that hands an app a body already read."""

from __future__ import annotations

import json
from typing import Any

from starlette.types import Message, Receive


def json_messages(status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] | None = None) -> list[Message]:
    payload = json.dumps(body).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()), *(headers or [])]
    return [
        {"type": "http.response.start", "status": status, "headers": head},
        {"type": "http.response.body", "body": payload},
    ]


def replaying(body: bytes, receive: Receive) -> Receive:
    """The body once, as the middleware read it; after that the client's own channel (a disconnect, say)."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
