"""What a dashboard written for celery-exporter reads from a real Prometheus scraping the lab's exporter.

Real processes: redis-server, two prefork workers, the events exporter and Prometheus (1 s scrapes). A
healthy run first: success ratios read 100 %, not "No data". Then fast failures, whose received and failed
events land in one scrape interval (the case where a series is born already counted): every counter series
Prometheus stored starts at 0, and increase() over the run sees every failure. Then the consumer gauges
against `celery inspect`, and publishers from other processes plus a worker restart, which must add no
series to the sent counter.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator

import pytest

from lab.probes import WORK_TASK
from lab.procs import wait_until
from lab.prometheus import PromClient
from lab.stack import Stack, StackConfig

pytestmark = pytest.mark.stack  # the module's own Stack (STACK_FIXTURES names the shared ones)

HEALTHY = 6
WINDOW = "10m"  # longer than the module's run: Prometheus holds nothing from before the stack started
FAILURES = 5
PUBLISH = (
    "from app.core.celery import create_celery_app; from app.core.config import get_settings; "
    f"app = create_celery_app(get_settings(), set_as_current=False); app.send_task({WORK_TASK!r})"
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    cfg = StackConfig(
        run_dir=tmp_path_factory.mktemp("exporter-prometheus"),
        workers=2,
        api=False,
        smtp=False,
        ai_stub=False,
        exporter=True,
        prometheus=True,
        probes=True,
        overrides={"CELERY_WORKER_CONCURRENCY": 2},
    )
    with Stack(cfg) as s:
        yield s


@pytest.fixture(scope="module")
def prom(stack: Stack) -> PromClient:
    assert stack.prometheus is not None
    return PromClient(stack.prometheus.url)


def backend_states(stack: Stack, ids: list[str]) -> Counter[str]:
    return Counter(stack.celery.AsyncResult(i).state for i in ids)


def scalar(prom: PromClient, expr: str) -> float | None:
    result = prom.query(expr)
    return float(result[0]["value"][1]) if result else None


def scraped(prom: PromClient, expr: str, expected: float) -> None:
    """Wait until Prometheus' answer to ``expr`` reaches ``expected`` (events trail the backend by a scrape)."""
    wait_until(lambda: scalar(prom, expr) == expected, timeout=30, what=f"Prometheus reading {expr} == {expected}")


def run(stack: Stack, n: int, fail: bool) -> list[str]:
    ids = [stack.celery.send_task(WORK_TASK, kwargs={"duration_s": 0.0, "fail": fail}).id for _ in range(n)]
    state = "FAILURE" if fail else "SUCCESS"
    wait_until(lambda: backend_states(stack, ids)[state] == n, timeout=60, what=f"{n} tasks reaching {state}")
    return ids


def test_the_stack_is_ready_only_once_prometheus_has_scraped_the_exporter(stack: Stack) -> None:
    assert stack.prometheus is not None and stack.prometheus.scraped({"celery"})
    assert 0 < stack.startup["workers_s"] <= stack.startup["first_scrape_s"], stack.startup
    assert json.loads((stack.run_dir / "stack.json").read_text())["startup"] == stack.startup


def test_a_healthy_stack_reads_100_percent_success_and_failures_at_0(stack: Stack, prom: PromClient) -> None:
    run(stack, HEALTHY, fail=False)
    scraped(prom, "sum(celery_task_succeeded_total)", HEALTHY)
    # The success ratio of celery-exporter's dashboards, by task name: a number, 1, and no "No data".
    ratio = prom.query(
        "sum by (name) (rate(celery_task_succeeded_total[1m])) / (sum by (name) (rate(celery_task_succeeded_total[1m]))"
        " + sum by (name) (rate(celery_task_failed_total[1m])))"
    )
    assert [(r["metric"]["name"], float(r["value"][1])) for r in ratio] == [(WORK_TASK, 1.0)]
    assert scalar(prom, 'sum(celery_task_failed_total{exception=""})') == 0


def test_increase_sees_every_failure_and_every_series_starts_at_0(stack: Stack, prom: PromClient) -> None:
    run(stack, FAILURES, fail=True)
    scraped(prom, 'sum(celery_task_failed_total{exception="ProbeError"})', FAILURES)
    window = WINDOW
    seen = scalar(prom, f"sum(increase(celery_task_failed_total[{window}]))")
    # increase() extrapolates to the window's ends, so it may read a little over N; a series born at its first
    # failure would make it read one under N per series (3.00 for 5 failures, before the hold).
    assert seen is not None and FAILURES - 0.01 <= seen <= FAILURES * 1.25, seen
    # The invariant behind it: the first sample Prometheus stored of every counter series is 0.
    raw = prom.query(f'{{__name__=~"celery_task_.*_total", job="celery"}}[{window}]')
    first = {(r["metric"]["__name__"], tuple(sorted(r["metric"].items()))): float(r["values"][0][1]) for r in raw}
    assert len(first) > 10 and {k[0] for k, v in first.items() if v != 0} == set(), first


# Queries of the kind dashboards written for celery-exporter's metric names make (celery-mixin's panels:
# ratios, breakdowns by task and exception, quantiles, worker and queue gauges), in the lab's own words.
EXPORTER_STYLE = (
    "sum by (name) (increase(celery_task_succeeded_total[10m]))",
    'sum by (name, exception) (increase(celery_task_failed_total{exception!=""}[10m]))',
    "sum by (name) (rate(celery_task_received_total[1m]))",
    "sum by (queue_name) (rate(celery_task_sent_total[1m]))",
    "sum(rate(celery_task_retried_total[1m])) + sum(rate(celery_task_rejected_total[1m]))",
    "sum(rate(celery_task_revoked_total[1m]))",
    "histogram_quantile(0.95, sum by (name, le) (rate(celery_task_runtime_bucket[1m])))",
    "count(celery_worker_up == 1)",
    "sum by (hostname) (celery_worker_tasks_active)",
    "sum by (queue_name) (celery_queue_length)",
    "celery_active_consumer_count",
    "celery_active_worker_count",
    "celery_active_process_count",
)


def test_queries_written_for_celery_exporters_names_have_data(stack: Stack, prom: PromClient) -> None:
    run(stack, 2, fail=False)
    wait_until(
        lambda: scalar(prom, "count(celery_active_worker_count)") is not None,
        timeout=30,
        what="the consumer gauges",
    )
    empty = [q for q in EXPORTER_STYLE if not prom.query(q)]
    assert empty == [], empty


def test_consumer_gauges_agree_with_celery_inspect(stack: Stack, prom: PromClient) -> None:
    inspect = stack.celery.control.inspect(timeout=2.0)
    queues = inspect.active_queues() or {}
    stats = inspect.stats() or {}
    workers = sum(1 for qs in queues.values() if any(q["name"] == stack.queue for q in qs))
    processes = sum(len(stats[node]["pool"]["processes"]) for node in queues)
    assert workers == 2 and processes == 4, (queues, stats)
    expected = {"worker": workers, "process": processes, "consumer": workers}  # Redis: a consumer per worker

    def agrees() -> bool:
        got = {k: scalar(prom, f'celery_active_{k}_count{{queue_name="{stack.queue}"}}') for k in expected}
        return got == expected

    wait_until(agrees, timeout=30, what=f"the consumer gauges reading {expected}")


def test_other_publishers_and_a_worker_restart_add_no_sent_series(stack: Stack, prom: PromClient) -> None:
    run(stack, 2, fail=False)

    def sent_series() -> list[dict[str, str]]:
        return [r["metric"] for r in prom.query("celery_task_sent_total")]

    scraped(prom, "sum(celery_task_sent_total)", HEALTHY + FAILURES + 4)
    before = sent_series()
    for _ in range(2):  # two more publishing processes: each has its own gen<pid>@host node name
        subprocess.run([sys.executable, "-c", PUBLISH], env=stack.env, check=True, timeout=60, capture_output=True)
    stack.restart_member("w1")
    run(stack, 2, fail=False)
    scraped(prom, "sum(celery_task_sent_total)", HEALTHY + FAILURES + 8)
    assert sent_series() == before, (before, sent_series())
    assert all("worker" not in s and "@" not in s["hostname"] for s in before), before
