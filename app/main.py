"""The FastAPI application: ``uvicorn app.main:app``."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.dispatch import Dispatcher
from app.api.idempotency import IdempotencyMiddleware, IdempotencyStore, idempotency_key_header
from app.api.limits import BodyLimitMiddleware
from app.api.v1.endpoints import ai, health, tasks, users, workflows
from app.core.config import get_settings
from app.core.logging import configure_logging
from app.core.metrics import ApiMetrics, MetricsMiddleware, connect_dispatch_counter
from app.db.session import init_db

log = structlog.get_logger("app.api")


class RequestIdMiddleware:
    """Binds a request id (the client's X-Request-ID, or a new one) to every log line of the request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")[:64]
        request_id = given or uuid.uuid4().hex
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        await self.app(scope, receive, send_with_id)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = get_settings()
    init_db()
    app.state.dispatch = Dispatcher(settings)
    app.state.idempotency = IdempotencyStore(settings)
    log.info("api started", dispatch_mode=settings.api_dispatch_mode)
    yield
    app.state.dispatch.close()
    await app.state.idempotency.close()


def _validation_message(errors: list[dict[str, Any]]) -> str:
    parts = []
    for err in errors:
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in {"body", "query", "path"})
        if err.get("type") == "json_invalid":
            where = "body"  # its loc is a character offset, which reads like a field name
        parts.append(f"{where or 'request'}: {err.get('msg')}")
    return "; ".join(parts)


def create_app() -> FastAPI:
    # At import time, not in the lifespan: uvicorn imports the app before it logs "Started server process",
    # so its own first lines already go through structlog.
    configure_logging()
    app = FastAPI(title="celery-lab reference system", version="0.1.0", lifespan=lifespan)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        # FastAPI answers a body it cannot parse (invalid UTF-8, JSON nested past its parser's depth) with a
        # bare 400; the documented answer to bad input is a 422 with a one-line message.
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            detail = [
                {"loc": ["body"], "msg": "not parseable JSON (UTF-8, not too deeply nested)", "type": "json_invalid"}
            ]
            return JSONResponse({"message": "body: not parseable JSON", "detail": detail}, status_code=422)
        return await http_exception_handler(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{k: v for k, v in e.items() if k in {"loc", "msg", "type"}} for e in exc.errors()]
        return JSONResponse({"message": _validation_message(errors), "detail": errors}, status_code=422)

    api = APIRouter(prefix="/api/v1")
    # Every POST endpoint takes an Idempotency-Key (IdempotencyMiddleware); the dependency documents it.
    for module in (users, ai, workflows):
        api.include_router(module.router, dependencies=[Depends(idempotency_key_header)])
    api.include_router(tasks.router)
    app.include_router(api)
    app.include_router(health.router)

    metrics = ApiMetrics()
    connect_dispatch_counter(metrics)

    @app.get("/metrics", include_in_schema=False)
    async def _metrics() -> Response:
        body, content_type = metrics.expose()
        return Response(body, media_type=content_type)

    app.add_middleware(IdempotencyMiddleware)  # inside RequestIdMiddleware: a replay gets its own request id
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    # Last added, so first to run: before the idempotency middleware reads a whole body.
    app.add_middleware(BodyLimitMiddleware)
    return app


app = create_app()
