"""How the API hands tasks to the broker.

The guide calls the blocking ``.delay()`` from ``async def`` endpoints. That is the fastest path on an idle
machine (no thread hop), but each publish holds the event loop for a broker round trip, and when the broker
stalls every route stalls with it, /health included. The default here ("executor") publishes from a small
dedicated thread pool with a deadline: a stalled broker costs only the dispatching requests, which answer 503
after API_DISPATCH_TIMEOUT_S, and everything else keeps answering. "inline" keeps the guide's behaviour for
comparison; docs/api-dispatch.md has the measured trade-off.

A 503 after the deadline is ambiguous: the publish may still complete once the broker wakes up. The response
says so, and clients should treat dispatch as at-least-once (the tasks here are idempotent).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import structlog
from fastapi import HTTPException
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from app.core.config import Settings

T = TypeVar("T")
log = structlog.get_logger("app.api.dispatch")


# The largest canvas a route accepts (ChordRequest: 1,000 items and the callback).
MAX_CANVAS_TASKS = 1001


class Dispatcher:
    def __init__(self, settings: Settings) -> None:
        self.mode = settings.api_dispatch_mode
        self.timeout = settings.api_dispatch_timeout_s
        self.per_task = settings.api_dispatch_timeout_per_task_s
        self._pool = ThreadPoolExecutor(settings.api_dispatch_threads, thread_name_prefix="dispatch")
        self._reads = ThreadPoolExecutor(settings.api_dispatch_threads, thread_name_prefix="reads")

    def deadline(self, tasks: int = 1) -> float:
        """Seconds a dispatch publishing ``tasks`` messages may take before it answers 503."""
        return self.timeout + self.per_task * max(tasks - 1, 0)

    async def __call__(self, fn: Callable[..., T], *args: Any, tasks: int = 1, **kwargs: Any) -> T:
        """Run the publishing call ``fn(*args, **kwargs)``; ``tasks`` is how many messages it publishes."""
        what = getattr(getattr(fn, "__self__", None), "name", getattr(fn, "__name__", "?"))
        timeout = self.deadline(tasks)
        try:
            if self.mode == "inline":
                result = fn(*args, **kwargs)
            else:
                loop = asyncio.get_running_loop()
                fut = loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))
                result = await asyncio.wait_for(fut, timeout)
            log.info("task dispatched", task_name=what, task_id=getattr(result, "id", None), tasks=tasks)
            return result
        except TimeoutError:
            log.error("dispatch timed out", task_name=what, timeout_s=timeout, tasks=tasks)
            raise HTTPException(
                status_code=503,
                detail=f"the broker did not accept the task within {timeout:g}s; it may still be "
                "queued when the broker recovers, so retry with the same request id",
                headers={"Retry-After": "5"},
            ) from None
        except OperationalError as exc:
            log.error("broker unavailable", task_name=what, error=str(exc))
            raise HTTPException(
                status_code=503, detail=f"broker unavailable: {exc}", headers={"Retry-After": "5"}
            ) from None

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking read of the result backend or cache (``GET /tasks/{id}``) under the same deadline
        as a dispatch, on its own pool: a stalled Redis answers 503 with Retry-After, not a plain-text 500
        after the client's 5 s socket timeout."""
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.run_in_executor(self._reads, functools.partial(fn, *args)), self.timeout)
        except TimeoutError:
            log.error("result read timed out", timeout_s=self.timeout)
            raise HTTPException(
                status_code=503,
                detail=f"the result backend did not answer within {self.timeout:g}s; retry shortly",
                headers={"Retry-After": "5"},
            ) from None
        except (RedisError, OperationalError, OSError) as exc:
            log.error("result backend unavailable", error=repr(exc))
            raise HTTPException(
                status_code=503, detail=f"result backend unavailable: {exc}", headers={"Retry-After": "5"}
            ) from None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._reads.shutdown(wait=False, cancel_futures=True)
