"""The bench's ``stock`` side: plain Celery, as a project that followed Celery's own docs would run it.

The same reliability settings as the reference profile (acks_late, reject_on_worker_lost, prefetch 1, JSON
only) and the same task bodies as the bench's bare tasks, but stock kombu's Redis transport, Celery's own
logging, no task events, no lab or app code (an import-linter contract keeps it so): what every comparison
can be measured against as "what Celery itself costs here".

The worker finds the broker and the result backend in ``CELERY_BROKER_URL`` / ``CELERY_RESULT_BACKEND``, which
the lab's Stack sets (Celery reads them before an app's own settings). The tasks have names of their own
(``TASKS``, by workload): the lab's harness tasks are shared tasks and join every app in the bench's process.
"""

from __future__ import annotations

import os
import time

from celery import Celery

TASKS = {"noop": "bench.stock.noop", "io": "bench.stock.io_sleep", "cpu": "bench.stock.cpu_spin"}

app = Celery("stock", set_as_current=False)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    worker_concurrency=2,  # one per core of the machines the bench is measured on, as the guide suggests
    result_expires=3600,
    broker_connection_retry_on_startup=True,
)


@app.task(name=TASKS["noop"])
def noop() -> None:
    return None


@app.task(name=TASKS["io"])
def io_sleep() -> None:
    time.sleep(float(os.environ.get("BENCH_SLEEP_MS", "20")) / 1000)  # the workload: an I/O wait


@app.task(name=TASKS["cpu"])
def cpu_spin() -> int:
    x = 1
    for _ in range(int(os.environ.get("BENCH_CPU_ITERS", "40000"))):
        x = (x * 1103515245 + 12345) & 0xFFFFFFFF
    return x
