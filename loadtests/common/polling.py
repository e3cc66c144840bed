"""Follow a task through ``GET /api/v1/tasks/{id}`` until it is done, and report its end-to-end latency.

The latency is the task's own ``timeline`` (sent -> started -> finished, stamped by the publisher and the
worker), not the client's polling clock: it is reported as a Locust request of type TASK (sent -> finished)
and one of type QUEUE (sent -> started), beside the HTTP timings, so queueing shows apart from HTTP time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gevent
from celery import states

from loadtests.common.base import ApiUser, stopping
from loadtests.common.metrics import QUEUE, TASK

FINAL = states.READY_STATES
STATUS_NAME = "/api/v1/tasks/[id]"


class TaskFailed(Exception):
    """A followed task ended in the wrong state, with a wrong result, or not in time."""


@dataclass
class Followed:
    task_id: str
    status: str | None = None
    body: dict[str, Any] | None = None
    abandoned: bool = False  # the user was told to stop; the lab's drain still accounts for the task
    timed_out: bool = False
    problem: str | None = None  # set by ``watch``: e.g. progress going backwards


def fire_task(
    environment: Any,
    flow: str,
    timeline: dict[str, Any] | None,
    error: str | None,
    first: dict[str, Any] | None = None,
) -> None:
    """Report one finished task as TASK (sent -> finished), and its queue wait as QUEUE (sent -> started).

    For a workflow, ``first`` is the timeline of its first task: the span then starts at that task's ``sent``
    and the queue wait is that task's."""
    tl = timeline or {}
    head = first or tl
    sent, started, finished = head.get("sent"), head.get("started"), tl.get("finished")
    e2e = (finished - sent) * 1000 if sent and finished else None
    if e2e is None and error is None:
        error = "finished without a timeline (sent/finished timestamps)"
    fire = environment.events.request.fire
    exc = TaskFailed(error) if error else None
    fire(request_type=TASK, name=flow, response_time=e2e, response_length=0, exception=exc, context={})
    if sent and started:
        fire(request_type=QUEUE, name=flow, response_time=(started - sent) * 1000, response_length=0, exception=None)


def follow_task(
    user: ApiUser, task_id: str, *, watch: Callable[[dict[str, Any]], str | None] | None = None
) -> Followed:
    """Poll until the task is final, the scenario's task timeout passes, or the user stops. A final state comes
    with its timeline: the worker writes the timeline before Celery stores the result (app/core/timeline.py).

    ``watch`` sees every answer and may return a problem (e.g. progress going backwards)."""
    sc = user.scenario
    out = Followed(task_id)
    deadline = time.monotonic() + sc.task_timeout_s
    while True:
        if stopping(user):
            out.abandoned = True
            return out
        body = user.call("GET", f"/api/v1/tasks/{task_id}", name=STATUS_NAME, expect=(200,), require=("status",))
        if body is not None:
            out.body, out.status = body, body["status"]
            if watch is not None and out.problem is None:
                out.problem = watch(body)
            if out.status in FINAL:
                return out
        if time.monotonic() >= deadline:
            out.timed_out = True
            return out
        gevent.sleep(sc.poll_interval_s)


def report(
    user: ApiUser,
    flow: str,
    followed: Followed,
    *,
    check: Callable[[Any], str | None] | None = None,
    first: dict[str, Any] | None = None,
) -> None:
    """Fire TASK/QUEUE for a followed task: a failure unless it SUCCEEDed, in time, and ``check(result)`` is None."""
    if followed.abandoned:
        return
    body = followed.body or {}
    if followed.timed_out:
        user.environment.events.request.fire(
            request_type=TASK,
            name=flow,
            response_time=user.scenario.task_timeout_s * 1000,
            response_length=0,
            exception=TaskFailed(f"not done within {user.scenario.task_timeout_s:g}s (last status {followed.status})"),
        )
        return
    error = None
    if followed.status != states.SUCCESS:
        error = f"ended {followed.status}: {body.get('error') or body.get('message') or ''}".strip()
    elif followed.problem:
        error = followed.problem
    elif check is not None:
        error = check(body.get("result"))
    fire_task(user.environment, flow, body.get("timeline"), error, first=first)
