"""Tasks with known outcomes for metric checks, loaded with ``celery worker --include dashboards.probe``.

``work`` sleeps a given time (so a kill lands mid-task) and then succeeds, or raises ``ProbeError`` when
asked to, so every counter has a ground truth the caller chose.
"""

from __future__ import annotations

import time

from celery import shared_task

WORK_TASK = "dashboards.probe.work"


class ProbeError(RuntimeError):
    """The failure a probe raises on request."""


@shared_task(name=WORK_TASK)
def work(duration_s: float = 0.0, fail: bool = False) -> str:
    time.sleep(duration_s)  # the work itself: a known duration
    if fail:
        raise ProbeError("failed on request")
    return "ok"
