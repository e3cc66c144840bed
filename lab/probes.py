"""Every harness task, loaded into workers with one ``celery worker --include lab.probes``.

Importing this module builds nothing and reads no environment: the tasks are ``shared_task``s (bound to
whichever app the worker runs, the reference app or a user's) and the knobs are read when a task runs.

- ``lab.probes.ledger_sleep`` (chaos): records its start in the loss ledger before doing anything and its
  finish after its work, so an execution cut short by a fault leaves a start without a finish. The ledger's
  URL comes from ``LAB_LEDGER_URL`` (StackConfig.extra_env), never from the broker's settings.
- The app's own tasks as chaos probes: a message sent with the ``lab_ledger_run`` header is recorded by the
  ``task_prerun`` (start) and ``task_success`` (finish) signal hooks below, whatever its task. Both run in the
  pool child around the task body, before Celery acknowledges an acks_late message, so the ledger sees an app
  task exactly as it sees ``ledger_sleep``. A retry is a start without a finish; its next attempt finishes.
- The app's own tasks under load (``lab load broker-direct --app``): a message sent with the ``lab_timeline``
  header gets the reference app's timeline (``app/core/timeline.py``: sent, started, finished, state, attempt)
  written by ``task_prerun``/``task_postrun`` to ``LAB_TIMELINE_URL`` (the Stack's cache), so load figures come
  from the tasks' own clocks on any app. ``task_postrun`` runs just after Celery stored the result: the
  "finished" stamp is a few hundred microseconds late, and a reader may see the result a moment before the
  timeline.
- ``lab.probes.work`` (metrics checks): sleeps a given time, then succeeds or raises ``ProbeError`` on request,
  so every counter has a ground truth the caller chose.
- ``lab.probes.noop`` / ``io_sleep`` / ``cpu_spin`` (bench): their cost is set by the worker's environment
  (``BENCH_SLEEP_MS``, default 20; ``BENCH_CPU_ITERS``, default 40000), so "a config that does more work per
  task" is a config like any other. The ``*_bare`` twins are plain ``celery.Task``s (no timeline), and with
  ``BENCH_BARE=1`` a worker disconnects every app/lab task signal handler at start-up: bare Celery with the
  same settings, to measure the lab's own instrumentation.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Mapping
from typing import Any

import redis
from celery import Celery, Task, shared_task, signals
from celery.signals import task_postrun, task_prerun, task_success, worker_init, worker_process_init

from app.core.timeline import timeline_key, timeline_record
from lab.apps import AppInputError
from lab.ledger import LEDGER_ENV, Ledger

LEDGER_TASK = "lab.probes.ledger_sleep"
WORK_TASK = "lab.probes.work"
RUN_HEADER = "lab_ledger_run"  # message header naming the ledger run an app task records into
TIMELINE_HEADER = "lab_timeline"  # message header: write this app task's timeline (load on a user's app)
TIMELINE_ENV = "LAB_TIMELINE_URL"  # the Redis the timelines go to (the Stack sets it for a user's app)
TIMELINE_TTL_S = 3600
# Probe kinds an experiment can choose (configuration.probe): the task each sends, and whether it needs the
# Stack's SMTP sink. "send_welcome_email" is the app's real task (app/tasks/email.py), through real SMTP.
PROBES = {"sleep": LEDGER_TASK, "send_welcome_email": "app.tasks.email.send_welcome_email"}
NEEDS_SMTP = {"send_welcome_email"}
ADDRESS_DOMAIN = "chaos.lab.test"
# Bench tasks by workload name: (instrumented, bare).
BENCH_TASKS = {
    "noop": ("lab.probes.noop", "lab.probes.noop_bare"),
    "io": ("lab.probes.io_sleep", "lab.probes.io_sleep_bare"),
    "cpu": ("lab.probes.cpu_spin", "lab.probes.cpu_spin_bare"),
}
BENCH_KNOBS = ("BENCH_SLEEP_MS", "BENCH_CPU_ITERS", "BENCH_BARE")

_ledgers: dict[tuple[int, str, str], Ledger] = {}
_open: dict[str, tuple[str, int, float]] = {}  # task id -> (run, attempt, start) of this process's execution
_timed: dict[str, float] = {}  # task id -> start, for a message with the timeline header
_timeline_clients: dict[tuple[int, str], redis.Redis] = {}


class ProbeError(RuntimeError):
    """The failure ``work`` raises on request."""


# --- chaos: the ledger probe and the header hooks ----------------------------------------------------------
def probe_address(task_id: str) -> str:
    """The recipient of an email probe: one per task id, so the SMTP sink is an independent count."""
    return f"{task_id}@{ADDRESS_DOMAIN}"


# A probe is a built-in kind (a PROBES key) or one of the app's own tasks with an argument template:
# {"task": "billing.tasks.charge", "args": [...], "kwargs": {...}}, where "{id}" in a string becomes the message's
# task id and a value "{index}" its number, so each message is distinct and its side effect countable.
Probe = str | Mapping[str, Any]


def probe_task(probe: Probe) -> str:
    return PROBES[probe] if isinstance(probe, str) else str(probe["task"])


def needs_smtp(probe: Probe) -> bool:
    return isinstance(probe, str) and probe in NEEDS_SMTP


def parse_call(args_json: str | None, option: str = "--args") -> tuple[list[Any], dict[str, Any]]:
    """``--args JSON`` of a task the lab sends: a JSON list is its positional arguments, an object its
    keyword ones. AppInputError (one line, exit 2) for anything else."""
    try:
        raw = json.loads(args_json) if args_json else []
    except json.JSONDecodeError as exc:
        raise AppInputError(f"{option} {args_json!r} is not JSON ({exc}); e.g. {option} '[\"{{id}}\", 1000]'") from None
    if not isinstance(raw, list | dict):
        raise AppInputError(f"{option} {args_json!r}: give a JSON list (positional) or object (keyword arguments)")
    return (list(raw), {}) if isinstance(raw, list) else ([], dict(raw))


def fill(template: Any, task_id: str, index: int) -> Any:
    """``template`` with its placeholders filled for one message."""
    if template == "{index}":
        return index
    if isinstance(template, str):
        return template.replace("{id}", task_id).replace("{index}", str(index))
    if isinstance(template, list):
        return [fill(v, task_id, index) for v in template]
    if isinstance(template, dict):
        return {k: fill(v, task_id, index) for k, v in template.items()}
    return template


def send_probe(
    app: Celery, probe: Probe, run: str, task_id: str, *, index: int = 0, duration_s: float = 0.05, producer: Any = None
) -> None:
    """Publish one probe for ledger ``run``. The caller records ``task_id`` as sent first."""
    args: list[Any] = []
    headers = {RUN_HEADER: run}
    if probe == "sleep":
        kwargs: dict[str, Any] = {"run": run, "duration_s": duration_s}
        headers = {}
    elif isinstance(probe, str):
        kwargs = {"user_id": index, "email": probe_address(task_id)}
    else:
        args = fill(list(probe.get("args", [])), task_id, index)
        kwargs = fill(dict(probe.get("kwargs", {})), task_id, index)
    app.send_task(probe_task(probe), args=args, kwargs=kwargs, headers=headers, task_id=task_id, producer=producer)


def _ledger(run: str) -> Ledger:
    url = os.environ.get(LEDGER_ENV)
    if not url:
        raise RuntimeError(f"{LEDGER_ENV} is not set: start the workers with the ledger's URL in StackConfig.extra_env")
    # One client per process: prefork children must not share their parent's socket.
    key = (os.getpid(), url, run)
    if key not in _ledgers:
        _ledgers[key] = Ledger(url, run)
    return _ledgers[key]


@shared_task(name=LEDGER_TASK, bind=True)
def ledger_sleep(self: Task, run: str, duration_s: float = 0.05) -> dict[str, object]:
    """Record the start, sleep ``duration_s``, record the finish. Returns where it ran."""
    ledger = _ledger(run)
    task_id = str(self.request.id)
    host = str(self.request.hostname or socket.gethostname())
    pid = os.getpid()
    redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
    attempt, start = ledger.record_start(task_id, host, pid, redelivered)
    time.sleep(duration_s)  # the work: a known duration, so faults land mid-task
    ledger.record_finish(task_id, attempt, host, pid, start)
    return {"attempt": attempt, "host": host, "pid": pid}


def _header(task: Task, name: str) -> Any:
    request = task.request
    return getattr(request, name, None) or (request.headers or {}).get(name)


def _run_of(task: Task) -> str | None:
    run = _header(task, RUN_HEADER)
    return str(run) if run else None


@task_prerun.connect
def _app_task_started(task_id: str | None = None, task: Task | None = None, **_: object) -> None:
    if task is None or task_id is None or task.name == LEDGER_TASK or not (run := _run_of(task)):
        return
    host = str(task.request.hostname or socket.gethostname())
    redelivered = bool((task.request.delivery_info or {}).get("redelivered"))
    attempt, start = _ledger(run).record_start(task_id, host, os.getpid(), redelivered)
    _open[task_id] = (run, attempt, start)


@task_success.connect
def _app_task_finished(sender: Task | None = None, **_: object) -> None:
    task_id = str(sender.request.id) if sender is not None else ""
    if task_id not in _open:
        return
    run, attempt, start = _open.pop(task_id)
    host = str(sender.request.hostname or socket.gethostname()) if sender is not None else socket.gethostname()
    _ledger(run).record_finish(task_id, attempt, host, os.getpid(), start)


@task_postrun.connect
def _app_task_ended(task_id: str | None = None, **_: object) -> None:
    _open.pop(str(task_id), None)  # a retry or a failure: no finish; the next attempt starts afresh


# --- load on an app's own tasks: their timelines ------------------------------------------------------------
@task_prerun.connect
def _timeline_started(task_id: str | None = None, task: Task | None = None, **_: object) -> None:
    if task is not None and task_id is not None and _header(task, TIMELINE_HEADER):
        _timed[task_id] = time.time()


@task_postrun.connect
def _timeline_ended(
    task_id: str | None = None, task: Task | None = None, state: str | None = None, **_: object
) -> None:
    started = _timed.pop(str(task_id), None)
    url = os.environ.get(TIMELINE_ENV)
    if started is None or task is None or not url:
        return
    record = timeline_record(task, started, state or "FAILURE")
    key = (os.getpid(), url)  # one client per process: prefork children must not share their parent's socket
    if key not in _timeline_clients:
        _timeline_clients[key] = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    with contextlib.suppress(redis.RedisError):  # observability must never fail the user's task
        pipe = _timeline_clients[key].pipeline(transaction=False)
        pipe.hset(timeline_key(str(task_id)), mapping=record)
        pipe.expire(timeline_key(str(task_id)), TIMELINE_TTL_S)
        pipe.execute()


# --- metrics checks -----------------------------------------------------------------------------------------
@shared_task(name=WORK_TASK)
def work(duration_s: float = 0.0, fail: bool = False) -> str:
    time.sleep(duration_s)  # the work itself: a known duration
    if fail:
        raise ProbeError("failed on request")
    return "ok"


# --- bench ----------------------------------------------------------------------------------------------------
def _sleep_s() -> float:
    return float(os.environ.get("BENCH_SLEEP_MS", "20")) / 1000


def _spin() -> int:
    x = 1
    for _ in range(int(os.environ.get("BENCH_CPU_ITERS", "40000"))):
        x = (x * 1103515245 + 12345) & 0xFFFFFFFF
    return x


@shared_task(name="lab.probes.noop")
def noop() -> None:
    return None


@shared_task(name="lab.probes.io_sleep")
def io_sleep() -> None:
    time.sleep(_sleep_s())  # the workload: an I/O wait of a configured length


@shared_task(name="lab.probes.cpu_spin")
def cpu_spin() -> int:
    return _spin()


@shared_task(name="lab.probes.noop_bare", base=Task)
def noop_bare() -> None:
    return None


@shared_task(name="lab.probes.io_sleep_bare", base=Task)
def io_sleep_bare() -> None:
    time.sleep(_sleep_s())  # the workload: an I/O wait of a configured length


@shared_task(name="lab.probes.cpu_spin_bare", base=Task)
def cpu_spin_bare() -> int:
    return _spin()


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
        if fn is not None and module.startswith(("app.", "lab.")):
            found.append(fn)
    return found


def strip_instrumentation() -> list[str]:
    """Disconnect app/lab task signal handlers (this module's too); returns what was disconnected."""
    removed = []
    for signal in TASK_SIGNALS:
        for fn in _instrumentation(signal):
            signal.disconnect(fn)
            removed.append(f"{signal.name}:{fn.__module__}.{fn.__qualname__}")
    return removed


@worker_init.connect
@worker_process_init.connect
def _bare_worker(**_: object) -> None:
    if os.environ.get("BENCH_BARE", "") == "1":
        print(f"lab.probes: BENCH_BARE=1, disconnected {strip_instrumentation()}", flush=True)
