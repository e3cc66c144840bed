"""A request body larger than ``API_MAX_BODY_BYTES`` is a 413 before the API reads it.

Without it a 200 MB body took the API from 130 MB to 698 MB of memory before its 422. A pure ASGI middleware,
first in the chain: a declared ``Content-Length`` over the limit is refused before a byte is read, and a body
without one (chunked) is read here, counted as it streams, and refused as soon as it passes the limit.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.asgi import json_messages, replaying
from app.core.config import get_settings


def _too_large(limit: int) -> list[Message]:
    detail = [{"loc": ["body"], "msg": f"at most {limit} bytes", "type": "too_large"}]
    return json_messages(
        413, {"message": f"request body larger than {limit} bytes (API_MAX_BODY_BYTES)", "detail": detail}
    )


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int | None = None) -> None:
        self.app = app
        self._max_bytes = max_bytes  # None: API_MAX_BODY_BYTES, read on the first request (not at import)

    @property
    def max_bytes(self) -> int:
        if self._max_bytes is None:
            self._max_bytes = get_settings().api_max_body_bytes
        return self._max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        try:
            too_big = declared is not None and int(declared) > self.max_bytes
        except ValueError:
            too_big = False  # not a number: the server rejects it
        if too_big:
            await self._answer(send)
            return
        if declared is not None:
            await self.app(scope, receive, send)  # the server stops reading at the declared length
            return
        # No length (chunked): read the body here, at most the limit, and hand it on. Raising from inside
        # the app's receive would not do: FastAPI turns any error while reading a body into a 400.
        chunks: list[bytes] = []
        seen, more = 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.max_bytes:
                await self._answer(send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        await self.app(scope, replaying(b"".join(chunks), receive), send)

    async def _answer(self, send: Send) -> None:
        for message in _too_large(self.max_bytes):
            await send(message)
