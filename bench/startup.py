"""``lab bench startup``: how long from ``lab up`` starting to a dashboard with data (a benchmark, not a test).

Each round starts the stack ``lab up`` starts with its defaults (API, SMTP sink, AI stub, one worker, beat,
Flower, the exporter and Prometheus), sends the README's sign-up as soon as the URLs would be printed, and
times, from the start: the URLs printed (the Stack ready: every member up, Prometheus has scraped each
target once), the first non-empty ``sum(rate(celery_task_succeeded_total[1m]))`` (the throughput panel has
a series: its first task's series exist at 0 from its first event), and the first read above 0 (the
exporter holds a new series at 0 for 2.5 scrape intervals so that rate() sees its first count:
docs/metrics.md). Rounds run one after another, each on fresh processes and ports; the figures are medians
with their range, beside the load average.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

import httpx

from lab.errors import StackError
from lab.machine import environment
from lab.procs import wait_until
from lab.stack import Stack, StackConfig

MILESTONES = ("members_s", "workers_s", "first_scrape_s", "urls_s", "first_rate_s", "first_success_s")
SIGN_UP = {"email": "ada@example.com", "name": "Ada"}


def one_round(run_dir: Path, timeout: float = 60.0) -> dict[str, float]:
    """One start of ``lab up``'s default stack, stopped again; seconds from the start to each milestone."""
    # lab up's defaults (lab/cli.py `up`): the reference app with every member.
    cfg = StackConfig(run_dir=run_dir, workers=1, beat=True, flower=True, prometheus=True)
    with Stack(cfg) as stack:
        stack.mark("urls_s")
        httpx.post(f"{stack.urls['api']}/api/v1/users", json=SIGN_UP, timeout=10).raise_for_status()

        wait_until(
            stack.note_first_data, timeout=timeout, what="the first succeeded rate above 0 in Prometheus", interval=0.1
        )
        return dict(stack.startup)


def summarize(rounds: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for key in MILESTONES:
        values = [r[key] for r in rounds if key in r]
        if values:
            out[key] = {"median": round(statistics.median(values), 2), "min": min(values), "max": max(values)}
    return out


def run(run_dir: Path, repeat: int) -> dict[str, Any]:
    if repeat < 1:
        raise StackError(f"--repeat must be at least 1, not {repeat}")
    load_before = os.getloadavg()
    started = time.time()
    rounds = [one_round(run_dir / f"round{i + 1}") for i in range(repeat)]
    return {
        "rounds": rounds,
        "summary": summarize(rounds),
        "load_average": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()]},
        "wall_s": round(time.time() - started, 1),
        "environment": environment(),
    }
