"""Probe tasks, loaded into workers with ``celery worker --include chaos.probe``.

Each execution writes its start to the ledger before doing anything and its finish after its work, so an
execution cut short by a fault leaves a start without a finish. The ledger's URL comes from the
``LAB_LEDGER_URL`` environment variable (StackConfig.extra_env), never from the broker's settings.
"""

from __future__ import annotations

import os
import socket
import time

from celery import Task, shared_task

from chaos.ledger import LEDGER_ENV, Ledger

PROBE_TASK = "chaos.probe.sleep"
_ledgers: dict[tuple[int, str, str], Ledger] = {}


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
