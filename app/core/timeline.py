"""Each task's own timestamps: sent -> started -> finished, kept in the cache Redis.

The publisher stamps ``sent_at`` into the message headers (before_task_publish); the worker writes one hash
``timeline:<task_id>`` when the task ends (one pipelined round trip per execution). Load tests, the demo and
benchmarks read end-to-end latency and queue wait from here rather than from client clocks, so queueing is
visible apart from HTTP time. Times are wall-clock epoch seconds; all processes share one host clock.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import redis
from celery import Task
from celery.signals import before_task_publish, task_postrun, task_prerun

from app.core.cache import get_redis
from app.core.config import get_settings

SENT_HEADER = "sent_at"
_started: dict[str, float] = {}


def timeline_key(task_id: str) -> str:
    return f"timeline:{task_id}"


@before_task_publish.connect
def _stamp_sent(headers: dict[str, Any] | None = None, **_: Any) -> None:
    # A retry republishes with the original request's headers, so the first send time survives retries.
    if headers is not None and SENT_HEADER not in headers:
        headers[SENT_HEADER] = time.time()


@task_prerun.connect
def _mark_started(task_id: str | None = None, **_: Any) -> None:
    if task_id:
        _started[task_id] = time.time()


@task_postrun.connect
def _record(task_id: str | None = None, task: Task | None = None, state: str | None = None, **_: Any) -> None:
    if not task_id or task is None:
        return
    started = _started.pop(task_id, None)
    request = task.request
    sent = getattr(request, SENT_HEADER, None) or (request.headers or {}).get(SENT_HEADER)
    record = {
        "name": task.name,
        "state": state or "",
        "sent": sent if sent is not None else "",
        "started": started if started is not None else "",
        "finished": time.time(),
        "attempt": (request.retries or 0) + 1,
        "hostname": request.hostname or socket.gethostname(),
        "pid": os.getpid(),
    }
    try:
        pipe = get_redis().pipeline(transaction=False)
        pipe.hset(timeline_key(task_id), mapping=record)
        pipe.expire(timeline_key(task_id), max(get_settings().celery_result_expires, 60))
        pipe.execute()
    except Exception:
        pass


def read_timeline(task_id: str, client: redis.Redis | None = None) -> dict[str, Any] | None:
    """One task's timeline, from this process' cache Redis or the given client (the lab reads a Stack's)."""
    raw = (client or get_redis()).hgetall(timeline_key(task_id))
    if not raw:
        return None
    out: dict[str, Any] = {}
    for key, value in raw.items():
        k, v = key.decode(), value.decode()
        if k in {"sent", "started", "finished"}:
            out[k] = float(v) if v else None
        elif k in {"attempt", "pid"}:
            out[k] = int(v)
        else:
            out[k] = v
    return out
