"""Health: is the broker reachable, are workers answering. Answers within a second, whatever the broker does.

Both probes block (a Redis PING, a Celery control ping), so they run in their own small thread pool under
a deadline. A probe still stuck from an earlier call (a SIGSTOPped broker) only makes the answer "down".
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from kombu import Connection

from app.core.celery import celery_app
from app.core.config import get_settings

router = APIRouter(tags=["Health"])
_probes = ThreadPoolExecutor(8, thread_name_prefix="health")


def _broker_ping(url: str, timeout: float) -> float:
    t0 = time.perf_counter()
    if url.startswith(("redis://", "rediss://", "unix://")):
        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            client.ping()
        finally:
            client.close()
    else:
        with Connection(url, connect_timeout=timeout) as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
    return (time.perf_counter() - t0) * 1000


def _worker_ping(timeout: float) -> list[str]:
    replies = celery_app.control.ping(timeout=timeout) or []
    return sorted(name for reply in replies for name in reply)


async def _bounded(fn: Any, *args: Any, deadline: float) -> tuple[Any, str | None]:
    loop = asyncio.get_running_loop()
    try:
        return await asyncio.wait_for(loop.run_in_executor(_probes, fn, *args), deadline), None
    except TimeoutError:
        return None, f"no answer within {deadline:g}s"
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    s = get_settings()
    budget = s.api_health_timeout_s
    broker_ms, broker_err = await _bounded(_broker_ping, s.celery_broker_url, budget / 2, deadline=budget / 2)
    workers: list[str] = []
    workers_err: str | None = "skipped: broker unreachable"
    if broker_err is None:
        found, workers_err = await _bounded(_worker_ping, budget / 3, deadline=budget / 2)
        workers = found or []
        if workers_err is None and not workers:
            workers_err = "no worker answered"
    ok = broker_err is None and bool(workers)
    body = {
        "status": "ok" if ok else "degraded",
        "broker": {"ok": broker_err is None, "latency_ms": broker_ms, "error": broker_err},
        "workers": {"ok": bool(workers), "count": len(workers), "names": workers, "error": workers_err},
    }
    return JSONResponse(body, status_code=200 if ok else 503)
