"""The exporter's counters against ground truth while a pool child and a whole worker are SIGKILLed.

Real processes: redis-server, two prefork workers, the events exporter and Flower. The test sends N probe
tasks (some fail on purpose), kills a busy pool child of w1 and then the busy worker w2, waits for every task
to reach a final state in the result backend, and compares: sent == N, succeeded == SUCCESS count, failed
== FAILURE count. A short visibility timeout brings w2's unacked tasks back within seconds.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.core.broker import POISON_REASONS
from lab.probes import WORK_TASK
from lab.procs import wait_until

N = 30
FAIL_EVERY = 6
OVERRIDES = {
    "CELERY_WORKER_CONCURRENCY": "2",
    # w2's unacked messages come back this long after its death; tasks (1 s) stay far below it, so a live
    # worker's task is never redelivered while it runs (that would be a true duplicate execution).
    "CELERY_VISIBILITY_TIMEOUT": "8",
    "CELERY_UNACKED_RESTORE_INTERVAL": "1",
    "CELERY_UNACKED_RESTORE_THROTTLE": "1",
}


def scrape(url: str) -> list[tuple[str, dict[str, str], float]]:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return [(s.name, s.labels, s.value) for fam in text_string_to_metric_families(text) for s in fam.samples]


def total(samples: list[tuple[str, dict[str, str], float]], metric: str, **match: str) -> float:
    return sum(v for n, labels, v in samples if n == metric and all(labels.get(k) == x for k, x in match.items()))


def test_counters_match_the_result_backend_after_kills(no_leftovers, stack_factory) -> None:
    stack = stack_factory(
        workers=2,
        api=False,
        smtp=False,
        ai_stub=False,
        exporter=True,
        flower=True,
        probes=True,
        overrides=OVERRIDES,
    )
    exporter, flower = stack.urls["exporter"], stack.urls["flower"]
    # Flower marks workers online from their events once its consumer is live; before that it would miss tasks.
    wait_until(
        lambda: total(scrape(flower), "flower_worker_online") >= 2,
        timeout=60,
        what="Flower consuming events",
        interval=0.5,
    )

    ids = [
        stack.celery.send_task(WORK_TASK, kwargs={"duration_s": 1.0, "fail": i % FAIL_EVERY == 0}).id for i in range(N)
    ]

    def busy(node: str, n: int) -> bool:
        return total(scrape(exporter), "celery_task_started_total", worker=node) >= n

    w1, w2 = stack.workers["w1"], stack.workers["w2"]
    wait_until(lambda: busy(w1.hostname, 1) and busy(w2.hostname, 1), timeout=60, what="both workers running tasks")
    # Both pool children of w1 are busy while the backlog lasts: whichever dies, it takes a task with it.
    child = stack.pool_children("w1")[0]
    os.kill(child, signal.SIGKILL)
    wait_until(
        lambda: total(scrape(exporter), "celery_task_worker_lost_total", cause="pool_child") >= 1,
        timeout=60,
        what="the exporter counting the killed pool child",
    )
    stack.kill_worker("w2", signal.SIGKILL)

    def final_states() -> Counter[str] | None:
        states = Counter(stack.celery.AsyncResult(i).state for i in ids)
        return states if set(states) <= {"SUCCESS", "FAILURE"} else None

    truth = wait_until(final_states, timeout=120, what="every task in a final state", interval=0.5)
    assert truth["FAILURE"] == len(range(0, N, FAIL_EVERY))

    def counts() -> dict[str, float]:
        s = scrape(exporter)
        return {
            "sent": total(s, "celery_task_sent_total", name=WORK_TASK),
            "succeeded": total(s, "celery_task_succeeded_total", name=WORK_TASK),
            "failed": total(s, "celery_task_failed_total", name=WORK_TASK, exception="ProbeError"),
        }

    expected = {"sent": N, "succeeded": truth["SUCCESS"], "failed": truth["FAILURE"]}
    # Events trail the backend by a moment; the counters must reach the truth (and a later check below
    # catches any overshoot from a duplicate execution).
    try:
        wait_until(lambda: counts() == expected, timeout=30, what="exporter counters equal to ground truth")
    except Exception:
        pytest.fail(f"exporter {counts()} != ground truth {expected}")

    # The silent worker is declared down by heartbeat expiry, its cut-short executions counted.
    wait_until(
        lambda: total(scrape(exporter), "celery_worker_up", worker=w2.hostname) == 0,
        timeout=30,
        what="w2 marked down",
    )
    s = scrape(exporter)
    assert total(s, "celery_worker_up", worker=w1.hostname) == 1
    assert total(s, "celery_task_worker_lost_total", worker=w2.hostname, cause="worker") >= 1
    # The pool child's task and w2's tasks came back: a redelivery each, and nothing is left in the gap.
    assert total(s, "celery_task_redelivered_total", name=WORK_TASK) >= 2
    assert total(s, "celery_task_lost_gap") == 0
    assert total(s, "celery_task_failed_total", exception="WorkerLostError") == 0  # requeued, not failed
    assert counts() == expected

    # Flower, an independent consumer of the same events, agrees; its REST API answers on the local stack.
    api = httpx.get(f"{flower}/api/tasks", params={"limit": str(N * 2)}, timeout=10)
    assert api.status_code == 200 and set(api.json()) & set(ids), api.text[:300]
    f = scrape(flower)
    assert total(f, "flower_events_total", type="task-succeeded", task=WORK_TASK) == truth["SUCCESS"]
    assert total(f, "flower_events_total", type="task-failed", task=WORK_TASK) == truth["FAILURE"]


def poison_samples(url: str) -> dict[str, float]:
    return {labels["reason"]: v for n, labels, v in scrape(url) if n == "celery_lab_poison_total"}


def test_quarantined_items_are_counted_by_reason_from_zero(no_leftovers, stack_factory) -> None:
    stack = stack_factory(workers=1, api=False, smtp=False, ai_stub=False, exporter=True)
    url = stack.urls["exporter"]
    # Every reason has a series at 0 before anything happened: the first quarantine is an increase() of 1.
    before = wait_until(lambda: poison_samples(url), timeout=30, what="the poison series")
    assert set(before) == set(POISON_REASONS) and not any(before.values())
    broker = stack.redis(0)
    items = [b"\xff not json", b'{"body": "x", "properties": {}}', b'{"body": null, "properties": null}']
    broker.lpush(stack.queue, *items)

    def counted() -> dict[str, float] | None:
        samples = poison_samples(url)
        return samples if samples.get("bad_properties") == 2 else None

    after = wait_until(counted, timeout=30, what="the counts")
    assert after["not_json"] == 1
    assert sum(after.values()) == 3 == broker.llen(f"{stack.queue}.poison")
    assert stack.workers["w1"].proc.alive()
