"""Bench-only tasks, loaded by bench workers with ``celery worker --include lab.bench.tasks``.

Their cost is set by the worker's environment, not by the message, so "a config that does more work per task"
is a config like any other (``lab bench reference reference:BENCH_SLEEP_MS=40``):

- ``BENCH_SLEEP_MS`` (default 20): how long ``io_sleep`` sleeps (an I/O wait: no CPU, holds a pool slot).
- ``BENCH_CPU_ITERS`` (default 40000): how many rounds of integer arithmetic ``cpu_spin`` does (holds the GIL).
- ``BENCH_BARE=1``: bare Celery with the same settings, to measure the lab's own instrumentation: the bench
  tasks are plain ``celery.Task`` subclasses instead of the app's task class (no timeline written, see
  app/core/timeline.py), and every task signal handler that ``app`` and ``lab`` connected (the structlog task
  context, anything added later) is disconnected.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any

from celery import Task, signals

from app.core.celery import celery_app

SLEEP_S = float(os.environ.get("BENCH_SLEEP_MS", "20")) / 1000
CPU_ITERS = int(os.environ.get("BENCH_CPU_ITERS", "40000"))
BARE = os.environ.get("BENCH_BARE", "") == "1"

TASK_SIGNALS = (
    signals.before_task_publish,
    signals.after_task_publish,
    signals.task_received,
    signals.task_prerun,
    signals.task_postrun,
    signals.task_success,
    signals.task_failure,
    signals.task_retry,
    signals.task_revoked,
    signals.task_internal_error,
)


def _instrumentation(signal: signals.Signal) -> list[Any]:
    found = []
    for _key, ref in list(signal.receivers):
        fn = ref() if callable(ref) and not hasattr(ref, "__code__") else ref
        module = getattr(fn, "__module__", "") or ""
        if fn is not None and module.startswith(("app.", "lab.")) and module != __name__:
            found.append(fn)
    return found


def strip_instrumentation() -> list[str]:
    """Disconnect app/lab task signal handlers; returns what was disconnected (for the worker log)."""
    removed = []
    for signal in TASK_SIGNALS:
        for fn in _instrumentation(signal):
            signal.disconnect(fn)
            removed.append(f"{signal.name}:{fn.__module__}.{fn.__qualname__}")
    return removed


if BARE:
    print(f"lab.bench: BENCH_BARE=1, plain celery.Task; disconnected {strip_instrumentation()}", flush=True)
# The app's task class writes each task's timeline; bare tasks skip it.
task = functools.partial(celery_app.task, base=Task) if BARE else celery_app.task


@task(name="lab.bench.noop")
def noop() -> None:
    return None


@task(name="lab.bench.io_sleep")
def io_sleep() -> None:
    time.sleep(SLEEP_S)


@task(name="lab.bench.cpu_spin")
def cpu_spin() -> int:
    x = 1
    for _ in range(CPU_ITERS):
        x = (x * 1103515245 + 12345) & 0xFFFFFFFF
    return x
