"""Read many tasks' timelines and results in a few pipelined round trips (the lab's drain, the producer's
tracker), decoding each exactly as ``app.core.timeline.read_timeline`` does."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import redis
from celery import states
from celery.backends.base import KeyValueStoreBackend

from app.core.timeline import read_timeline, timeline_key

# Locust's processes build no Celery app (nor its backend): Celery's own prefix names a result's key.
RESULT_PREFIX = KeyValueStoreBackend.task_keyprefix


class _Fetched:
    """Hands ``read_timeline`` a hash already fetched in a pipeline."""

    def __init__(self, raw: dict[bytes, bytes]) -> None:
        self.raw = raw

    def hgetall(self, _key: str) -> dict[bytes, bytes]:
        return self.raw


def read_timelines(client: redis.Redis, task_ids: Sequence[str]) -> dict[str, dict[str, Any] | None]:
    pipe = client.pipeline(transaction=False)
    for tid in task_ids:
        pipe.hgetall(timeline_key(tid))
    return {
        tid: read_timeline(tid, _Fetched(raw)) if raw else None  # type: ignore[arg-type]
        for tid, raw in zip(task_ids, pipe.execute(), strict=True)
    }


def read_states(client: redis.Redis, task_ids: Sequence[str]) -> dict[str, str]:
    """Each task's state in the result backend; PENDING when it has no result yet (as Celery says)."""
    if not task_ids:
        return {}
    raws = client.mget([f"{RESULT_PREFIX}{tid}" for tid in task_ids])
    out = {}
    for tid, raw in zip(task_ids, raws, strict=True):
        try:
            out[tid] = json.loads(raw)["status"] if raw else states.PENDING
        except (ValueError, KeyError, TypeError):
            out[tid] = "UNREADABLE"
    return out
