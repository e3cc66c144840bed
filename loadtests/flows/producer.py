"""``CeleryProducer``: load that bypasses HTTP. Each user publishes a task by name straight into the broker.

Enqueue time is reported as a request of type ENQUEUE. Completion comes from the task's own timeline: one
greenlet per process reads the timelines of every pending task in one pipelined round trip, every 100 ms,
and fires TASK (sent -> finished) and QUEUE (sent -> started) when the task is done.

The publishing Celery app has no result backend on purpose: with the Redis backend, every ``send_task``
would also subscribe this process to the task's result channel, which nothing here ever reads. The workers
still store results (their own backend), and the lab's drain reads them there.

With ``--app`` the task is a user's, sent with the user's own app configuration and an argument template;
its timeline is written by lab.probes (the message carries its header), since the user's code has none.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import time
from typing import Any

import gevent
import redis
from celery import Celery, states, uuid
from locust import User, task

from app.core.celery import build_config
from app.core.config import settings_from
from lab.apps import AppTarget
from lab.probes import TIMELINE_HEADER, fill
from loadtests.common.base import WithScenario
from loadtests.common.config import Scenario
from loadtests.common.metrics import TASK
from loadtests.common.polling import TaskFailed, fire_task
from loadtests.common.timelines import read_timelines

TRACK_INTERVAL_S = 0.1
TRACK_BATCH = 1000


class Tracker:
    def __init__(self, environment: Any, cache_url: str) -> None:
        self.environment = environment
        self.redis = redis.Redis.from_url(cache_url, socket_timeout=5, socket_connect_timeout=5)
        self.pending: dict[str, tuple[str, float]] = {}
        gevent.spawn(self._loop)

    def add(self, task_id: str, flow: str, timeout_s: float) -> None:
        self.pending[task_id] = (flow, time.monotonic() + timeout_s)

    def _loop(self) -> None:
        while True:
            gevent.sleep(TRACK_INTERVAL_S)
            # A cache unreachable for a moment is retried; pending tasks time out if it stays so.
            if self.pending:
                with contextlib.suppress(redis.RedisError):
                    self._check(list(self.pending)[:TRACK_BATCH])

    def _check(self, ids: list[str]) -> None:
        now = time.monotonic()
        for tid, tl in read_timelines(self.redis, ids).items():
            flow, deadline = self.pending[tid]
            if tl and tl.get("state") in states.READY_STATES:
                del self.pending[tid]
                fire_task(self.environment, flow, tl, None if tl["state"] == states.SUCCESS else f"ended {tl['state']}")
            elif now >= deadline:
                del self.pending[tid]
                self.environment.events.request.fire(
                    request_type=TASK,
                    name=flow,
                    response_time=None,
                    response_length=0,
                    exception=TaskFailed(f"no final timeline within the task timeout ({tl and tl.get('state')})"),
                )


_app: list[Celery] = []
_sent = itertools.count()
NO_BACKEND = "disabled://"
_tracker: list[Tracker] = []


def publisher(sc: Scenario) -> Celery:
    if not _app:
        url = sc.broker.get("broker_url")
        if not url:
            raise RuntimeError("the scenario names no broker (lab load fills it in; see docs/load.md)")
        if sc.app:
            # A user's app: its own routes, queues and serializers (and the profile's overlay), on the lab's broker.
            app = AppTarget.from_env(os.environ).client(url, NO_BACKEND)
        else:
            app = Celery("lab-load-producer", broker=url, set_as_current=False)
            app.conf.update(build_config(settings_from({"CELERY_BROKER_URL": url})))
        _app.append(app)
    return _app[0]


def message(sc: Scenario, index: int) -> tuple[str, list[Any], dict[str, Any], dict[str, str]]:
    """One message's task id, args, kwargs and headers: the reference task's one number, or the scenario's
    template filled for this message, with the header that has lab.probes write a user task's timeline.
    ``index`` counts this Locust process's messages; ``{id}`` is the one placeholder unique across processes."""
    task_id = uuid()
    if sc.producer_args is None:
        return task_id, [random.randint(1, 1000)], {}, {}
    args, kwargs = fill(sc.producer_args, task_id, index), fill(sc.producer_kwargs, task_id, index)
    return task_id, args, kwargs, {TIMELINE_HEADER: "1"}


class CeleryProducer(WithScenario, User):
    def on_start(self) -> None:
        sc = self.scenario
        if sc.follow and not _tracker and sc.broker.get("cache_url"):
            _tracker.append(Tracker(self.environment, sc.broker["cache_url"]))

    @task
    def enqueue(self) -> None:
        sc = self.scenario
        short = sc.producer_task.rsplit(".", 1)[-1]
        task_id, args, kwargs, headers = message(sc, next(_sent))
        t0 = time.perf_counter()
        error: Exception | None = None
        try:
            publisher(sc).send_task(sc.producer_task, args=args, kwargs=kwargs, headers=headers, task_id=task_id)
        except Exception as exc:
            error = exc
        self.environment.events.request.fire(
            request_type="ENQUEUE",
            name=short,
            response_time=(time.perf_counter() - t0) * 1000,
            response_length=0,
            exception=error,
        )
        if error is None:
            self.record(short, task_id)
            if _tracker:
                _tracker[0].add(task_id, short, sc.task_timeout_s)
