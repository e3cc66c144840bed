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


# How many workers answered last time: the next ping returns as soon as that many have (``limit``), so it
# needs only their round trip, not its whole timeout, and a slow reply still fits in a generous timeout.
_last_seen = {"workers": 1}


def _worker_ping(timeout: float) -> list[str]:
    replies = celery_app.control.ping(timeout=timeout, limit=_last_seen["workers"]) or []
    names = sorted(name for reply in replies for name in reply)
    if names:
        _last_seen["workers"] = len(names)
    return names


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
    started = time.perf_counter()
    # A healthy broker answers PING in a millisecond: a quarter of the budget tells a stalled one quickly and
    # leaves the rest to the workers (before: a third, 0.27 s, which idle workers missed one time in two).
    broker_ms, broker_err = await _bounded(_broker_ping, s.celery_broker_url, budget / 4, deadline=budget / 4)
    workers: list[str] = []
    workers_err: str | None = "skipped: broker unreachable"
    if broker_err is None:
        left = budget - (time.perf_counter() - started)
        found, workers_err = await _bounded(_worker_ping, max(left - 0.1, 0.05), deadline=max(left, 0.1))
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
