"""Beat: the guide's schedule, with the daily report as a real crontab at 02:00 UTC."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta

import pytest
from celery.schedules import crontab

from app.core.celery import celery_app
from lab.procs import wait_until


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (datetime(2026, 3, 1, 0, 30, tzinfo=UTC), datetime(2026, 3, 1, 2, 0, tzinfo=UTC)),
        (datetime(2026, 3, 1, 2, 0, 30, tzinfo=UTC), datetime(2026, 3, 2, 2, 0, tzinfo=UTC)),
        (datetime(2026, 12, 31, 23, 59, tzinfo=UTC), datetime(2027, 1, 1, 2, 0, tzinfo=UTC)),
    ],
)
def test_daily_report_next_run_is_0200_utc(now: datetime, expected: datetime) -> None:
    entry = celery_app.conf.beat_schedule["daily-report"]
    assert entry["task"] == "app.tasks.reports.generate_daily_report"
    schedule = entry["schedule"]
    assert isinstance(schedule, crontab)
    schedule = copy.copy(schedule)  # the configured entry itself, evaluated at a fixed "now"
    schedule.nowfun = lambda: now
    next_run = now + schedule.remaining_estimate(now - timedelta(seconds=1))
    assert next_run.replace(microsecond=0) == expected


def test_cleanup_runs_hourly() -> None:
    entry = celery_app.conf.beat_schedule["cleanup-every-hour"]
    assert entry["task"] == "app.tasks.cleanup.cleanup_expired_data"
    assert entry["schedule"] == 3600.0


def test_beat_process_loads_the_schedule(app_stack) -> None:
    """A real `celery beat` runs with this schedule: it starts and is still alive (a dict schedule kills it)."""
    beat = app_stack.procs["beat"]
    wait_until(lambda: "beat: Starting" in beat.log_path.read_text(), timeout=30, what="beat to start")
    assert beat.alive(), beat.log_tail()
    assert "Traceback" not in beat.log_path.read_text()
