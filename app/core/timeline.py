"""Each task's own timestamps: sent -> started -> finished, kept in the cache Redis.

The publisher stamps ``sent_at`` into the message headers (before_task_publish); the app's base task
(``TimelineTask``) writes one hash ``timeline:<task_id>`` when the body ends, before Celery stores the result
(one pipelined round trip per execution), to the cache and with the expiry of the Settings the task's app was
built from. Load tests, the demo and benchmarks read end-to-end latency and queue wait from here rather than
from client clocks, so queueing is visible apart from HTTP time. Times are wall-clock epoch seconds; all
processes share one host clock.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from typing import Any

import redis
from celery import Task
from celery.exceptions import Ignore, Reject, Retry
from celery.signals import before_task_publish

from app.core.cache import get_redis, redis_client
from app.core.config import Settings, get_settings

SENT_HEADER = "sent_at"


def timeline_key(task_id: str) -> str:
    return f"timeline:{task_id}"


@before_task_publish.connect
def _stamp_sent(headers: dict[str, Any] | None = None, **_: Any) -> None:
    # A retry republishes with the original request's headers, so the first send time survives retries.
    if headers is not None and SENT_HEADER not in headers:
        headers[SENT_HEADER] = time.time()


class TimelineTask(Task):
    """Base task that writes the timeline when the body returns or raises.

    Written here, not in task_postrun: Celery stores the result before any signal or handler runs, so a
    client that saw SUCCESS could still find no timeline. ``__call__`` returns before the result is stored.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        started = time.time()
        state = "FAILURE"
        try:
            result = super().__call__(*args, **kwargs)
            state = "SUCCESS"
            return result
        except Retry:
            state = "RETRY"
            raise
        except (Ignore, Reject):
            state = "IGNORED"
            raise
        finally:
            _record(self, started, state)


def timeline_record(task: Task, started: float, state: str) -> dict[str, Any]:
    """The hash one execution writes, finished now (also written by the lab for tasks of other apps)."""
    request = task.request
    sent = getattr(request, SENT_HEADER, None) or (request.headers or {}).get(SENT_HEADER)
    return {
        "name": task.name,
        "state": state,
        "sent": sent if sent is not None else "",
        "started": started,
        "finished": time.time(),
        "attempt": (request.retries or 0) + 1,
        "hostname": request.hostname or socket.gethostname(),
        "pid": os.getpid(),
    }


def _record(task: Task, started: float, state: str) -> None:
    request = task.request
    if not request.id or request.is_eager:
        return
    record = timeline_record(task, started, state)
    settings = app_settings(task)
    with contextlib.suppress(Exception):  # observability must never fail a task
        pipe = redis_client(settings.cache_url).pipeline(transaction=False)
        pipe.hset(timeline_key(request.id), mapping=record)
        pipe.expire(timeline_key(request.id), max(settings.celery_result_expires, 60))
        pipe.execute()


def app_settings(task: Task) -> Settings:
    """The Settings the task's app was built from (``create_celery_app(s)`` keeps them as ``app.settings``)."""
    settings = getattr(task.app, "settings", None)
    # A TimelineTask on an app not made by create_celery_app has only this process' settings to go by.
    return settings if isinstance(settings, Settings) else get_settings()


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
