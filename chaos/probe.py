"""Probe tasks, loaded into workers with ``celery worker --include chaos.probe``.

Each execution writes its start to the ledger before doing anything and its finish after its work, so an
execution cut short by a fault leaves a start without a finish. The ledger's URL comes from the
``LAB_LEDGER_URL`` environment variable (StackConfig.extra_env), never from the broker's settings.

The app's own tasks can be probes too: a message sent with the ``lab_ledger_run`` header is recorded by the
``task_prerun`` (start) and ``task_success`` (finish) signal handlers below, whatever its task. Both run in
the pool child around the task body, before Celery acknowledges an acks_late message, so the ledger sees an
app task exactly as it sees ``chaos.probe.sleep``. A retry (``self.retry``) is a start without a finish; its
next attempt, the same task id, finishes.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from celery import Celery, Task, shared_task
from celery.signals import task_postrun, task_prerun, task_success

from chaos.ledger import LEDGER_ENV, Ledger

PROBE_TASK = "chaos.probe.sleep"
RUN_HEADER = "lab_ledger_run"  # message header naming the ledger run an app task records into
_ledgers: dict[tuple[int, str, str], Ledger] = {}
_open: dict[str, tuple[str, int, float]] = {}  # task id -> (run, attempt, start) of this process's execution
# Probe kinds an experiment can choose (configuration.probe): the task each sends, and whether it needs the
# Stack's SMTP sink. "send_welcome_email" is the app's real task (app/tasks/email.py), through real SMTP.
PROBES = {"sleep": PROBE_TASK, "send_welcome_email": "app.tasks.email.send_welcome_email"}
NEEDS_SMTP = {"send_welcome_email"}
ADDRESS_DOMAIN = "chaos.lab.test"


def probe_address(task_id: str) -> str:
    """The recipient of an email probe: one per task id, so the SMTP sink is an independent count."""
    return f"{task_id}@{ADDRESS_DOMAIN}"


def send_probe(
    app: Celery, kind: str, run: str, task_id: str, *, index: int = 0, duration_s: float = 0.05, producer: Any = None
) -> None:
    """Publish one probe of ``kind`` for ledger ``run``. The caller records ``task_id`` as sent first."""
    if kind == "sleep":
        kwargs: dict[str, Any] = {"run": run, "duration_s": duration_s}
        headers: dict[str, str] = {}
    else:
        kwargs, headers = {"user_id": index, "email": probe_address(task_id)}, {RUN_HEADER: run}
    app.send_task(PROBES[kind], kwargs=kwargs, headers=headers, task_id=task_id, producer=producer)


def _ledger(run: str) -> Ledger:
    url = os.environ.get(LEDGER_ENV)
    if not url:
        raise RuntimeError(f"{LEDGER_ENV} is not set: start the workers with the ledger's URL in StackConfig.extra_env")
    # One client per process: prefork children must not share their parent's socket.
    key = (os.getpid(), url, run)
    if key not in _ledgers:
        _ledgers[key] = Ledger(url, run)
    return _ledgers[key]


@shared_task(name=PROBE_TASK, bind=True)
def probe_sleep(self: Task, run: str, duration_s: float = 0.05) -> dict[str, object]:
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


def _run_of(task: Task) -> str | None:
    request = task.request
    run = getattr(request, RUN_HEADER, None) or (request.headers or {}).get(RUN_HEADER)
    return str(run) if run else None


@task_prerun.connect
def _app_task_started(task_id: str | None = None, task: Task | None = None, **_: object) -> None:
    if task is None or task_id is None or task.name == PROBE_TASK or not (run := _run_of(task)):
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
