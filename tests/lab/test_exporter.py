"""The events exporter's bookkeeping, fed the event sequences Celery sends (pure: no broker)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from lab.brokerview import AmqpDepthView
from lab.errors import BrokerUnreadable
from lab.exporter import EventState, Exporter, QueueConsumers, exception_name

W1, W2 = "w1@host", "w2@host"


def on(node: str) -> dict[str, str]:
    """A worker-side series' labels for a node: celery-exporter's hostname (the host) and the node name."""
    return {"hostname": node.split("@", 1)[1], "worker": node}


NAME = "app.tasks.email.send_welcome_email"


def make() -> tuple[EventState, CollectorRegistry]:
    registry = CollectorRegistry()
    return EventState(registry, "celery", expiry_factor=3.0), registry


def ev(state: EventState, etype: str, ts: float = 100.0, **fields: Any) -> None:
    state.handle({"type": etype, "timestamp": ts, "local_received": ts, **fields})


def ping(state: EventState, ts: float) -> None:
    """Our own event coming back: the stream is live at ``ts``."""
    ev(state, "lab-exporter-ping", ts, nonce=state.ping_nonce)


def value(reg: CollectorRegistry, metric: str, **labels: str) -> float | None:
    """The sample, or None when the series does not exist: a missing series is not a zero."""
    return reg.get_sample_value(metric, labels)


def lifecycle(
    state: EventState, task_id: str, host: str = W1, *, final: str = "task-succeeded", **final_fields: Any
) -> None:
    ev(state, "task-sent", 100.0, uuid=task_id, name=NAME, queue="celery", hostname="api@host", retries=0)
    ev(state, "task-received", 100.5, uuid=task_id, name=NAME, hostname=host, retries=0)
    ev(state, "task-started", 101.0, uuid=task_id, hostname=host)
    ev(state, final, 102.0, uuid=task_id, hostname=host, **final_fields)


def test_lifecycle_counts_each_state_with_celery_exporter_labels() -> None:
    state, reg = make()
    lifecycle(state, "t1", runtime=1.0)
    labels = {"name": NAME, **on(W1), "queue_name": "celery"}
    assert value(reg, "celery_task_sent_total", name=NAME, hostname="host", queue_name="celery") == 1
    for s in ("received", "started", "succeeded"):
        assert value(reg, f"celery_task_{s}_total", **labels) == 1, s
    assert value(reg, "celery_task_runtime_count", **labels) == 1
    assert value(reg, "celery_task_runtime_sum", **labels) == pytest.approx(1.0)
    assert value(reg, "celery_task_queue_wait_time_sum", **labels) == pytest.approx(1.0)


def test_queue_wait_starts_at_the_eta_not_at_publish() -> None:
    state, reg = make()
    ev(state, "task-sent", 100.0, uuid="t", name=NAME, queue="celery", eta="1970-01-01T00:02:00+00:00")
    ev(state, "task-started", 121.5, uuid="t", hostname=W1)  # eta = 120 s after the epoch
    assert value(reg, "celery_task_queue_wait_time_sum", name=NAME, **on(W1), queue_name="celery") == 1.5


def test_received_before_sent_uses_the_default_queue() -> None:
    state, reg = make()
    ev(state, "task-received", 100.0, uuid="t", name=NAME, hostname=W1)
    assert value(reg, "celery_task_received_total", name=NAME, **on(W1), queue_name="celery") == 1


@pytest.mark.parametrize(
    ("exception", "traceback", "expected"),
    [
        ("ValueError('bad')", None, "ValueError"),
        ("WorkerLostError('Worker exited prematurely: signal 9 (SIGKILL) Job: 3.')", None, "WorkerLostError"),
        ("ExceptionWithTraceback(ProbeError('x'), 'tb')", None, "ProbeError"),
        (
            "ExceptionWithTraceback(<unprintable>)",
            "Traceback (most recent call last):\n  File x\nbilliard.exceptions.WorkerLostError: gone",
            "WorkerLostError",
        ),
        ("", None, "unknown"),
    ],
)
def test_exception_names_are_real_class_names(exception: str, traceback: str | None, expected: str) -> None:
    assert exception_name(exception, traceback) == expected


def test_pool_child_lost_requeue_counts_worker_lost_and_gap_until_restart() -> None:
    state, reg = make()
    lifecycle(state, "t", final="task-rejected", requeue=True)
    lost = {"name": NAME, **on(W1), "queue_name": "celery", "cause": "pool_child"}
    assert value(reg, "celery_task_worker_lost_total", **lost) == 1
    assert value(reg, "celery_task_lost_gap", queue_name="celery") == 1
    ev(state, "task-received", 103.0, uuid="t", name=NAME, hostname=W1, retries=0)
    assert value(reg, "celery_task_redelivered_total", name=NAME, queue_name="celery") == 1
    ev(state, "task-started", 104.0, uuid="t", hostname=W1)
    assert value(reg, "celery_task_lost_gap", queue_name="celery") == 0
    ev(state, "task-succeeded", 105.0, uuid="t", hostname=W1, runtime=1.0)
    assert value(reg, "celery_task_succeeded_total", name=NAME, **on(W1), queue_name="celery") == 1


def test_reject_without_requeue_or_before_start_is_not_a_lost_worker() -> None:
    state, reg = make()
    lifecycle(state, "a", final="task-rejected", requeue=False)
    ev(state, "task-sent", 100.0, uuid="b", name=NAME, queue="celery")
    ev(state, "task-rejected", 101.0, uuid="b", hostname=W1, requeue=True)
    assert value(reg, "celery_task_rejected_total", name=NAME, **on(W1), queue_name="celery") == 2
    assert (
        value(reg, "celery_task_worker_lost_total", name=NAME, **on(W1), queue_name="celery", cause="pool_child") == 0
    )


def test_worker_lost_error_failure_counts_under_its_real_name() -> None:
    state, reg = make()
    lifecycle(state, "t", final="task-failed", exception="WorkerLostError('Worker exited prematurely: signal 9.')")
    labels = {"name": NAME, **on(W1), "queue_name": "celery"}
    assert value(reg, "celery_task_failed_total", **labels, exception="WorkerLostError") == 1
    assert value(reg, "celery_task_worker_lost_total", **labels, cause="pool_child") == 1
    # A final failure, not a gap: the gauge exists from the queue's first task-sent, at 0.
    assert value(reg, "celery_task_lost_gap", queue_name="celery") == 0


def test_silent_worker_expires_and_its_running_tasks_become_lost() -> None:
    state, reg = make()
    ev(state, "worker-online", 100.0, hostname=W2, freq=2.0)
    ev(state, "task-sent", 100.0, uuid="t", name=NAME, queue="celery")
    ev(state, "task-started", 101.0, uuid="t", hostname=W2)
    ev(state, "worker-heartbeat", 102.0, hostname=W2, freq=2.0, active=1)
    assert value(reg, "celery_worker_up", **on(W2)) == 1
    assert value(reg, "celery_worker_tasks_active", **on(W2)) == 1
    ping(state, 108.5)
    assert state.expire(now=107.9) == []  # within 3 heartbeats
    assert state.expire(now=108.1) == [W2]
    assert value(reg, "celery_worker_up", **on(W2)) == 0
    assert value(reg, "celery_worker_tasks_active", **on(W2)) == 0
    assert value(reg, "celery_task_worker_lost_total", name=NAME, **on(W2), queue_name="celery", cause="worker") == 1
    assert value(reg, "celery_task_lost_gap", queue_name="celery") == 1
    ev(state, "worker-heartbeat", 110.0, hostname=W2, freq=2.0, active=0)  # it was only paused
    assert value(reg, "celery_worker_up", **on(W2)) == 1


def test_restore_before_expiry_still_counts_the_cut_execution_but_no_gap() -> None:
    state, reg = make()
    ev(state, "worker-online", 100.0, hostname=W2, freq=2.0)
    ev(state, "task-sent", 100.0, uuid="t", name=NAME, queue="celery")
    ev(state, "task-started", 101.0, uuid="t", hostname=W2)
    ev(state, "worker-online", 100.0, hostname=W1, freq=2.0)
    ev(state, "task-started", 105.0, uuid="t", hostname=W1)  # visibility-timeout restore, W2 not expired yet
    ping(state, 109.0)
    state.expire(now=109.0)
    ev(state, "task-succeeded", 109.5, uuid="t", hostname=W1, runtime=0.5)
    assert value(reg, "celery_task_worker_lost_total", name=NAME, **on(W2), queue_name="celery", cause="worker") == 1
    assert value(reg, "celery_task_lost_gap", queue_name="celery") == 0  # never a gap


@given(st.lists(st.sampled_from(["succeeded", "failed", "retried", "rejected", "revoked"]), max_size=30))
def test_every_final_event_is_counted_exactly_once(finals: list[str]) -> None:
    state, reg = make()
    for i, final in enumerate(finals):
        lifecycle(state, f"t{i}", final=f"task-{final}", exception="ValueError('x')", requeue=False)
    for s in ("succeeded", "retried", "rejected", "revoked"):
        # Outcome series are created at 0 on a task's first start: with no task at all there are none.
        want = finals.count(s) if finals else None
        assert value(reg, f"celery_task_{s}_total", name=NAME, **on(W1), queue_name="celery") == want
    # The failed series is born on the first failure (issue 14 will create it at 0): none before it.
    failed = value(reg, "celery_task_failed_total", name=NAME, **on(W1), queue_name="celery", exception="ValueError")
    assert failed == (finals.count("failed") or None)
    assert value(reg, "celery_task_started_total", name=NAME, **on(W1), queue_name="celery") == (len(finals) or None)


def test_a_silent_stream_expires_nobody() -> None:
    # Broker paused: no heartbeats, but no pings either. Workers are not declared dead, tasks not lost.
    state, reg = make()
    ev(state, "worker-online", 100.0, hostname=W1, freq=2.0)
    ev(state, "task-sent", 100.0, uuid="t", name=NAME, queue="celery")
    ev(state, "task-started", 101.0, uuid="t", hostname=W1)
    ping(state, 101.0)
    assert state.expire(now=200.0) == []
    assert value(reg, "celery_worker_up", **on(W1)) == 1
    ping(state, 201.0)  # the stream is back and W1 still silent: now it is down
    assert state.expire(now=201.0) == [W1]
    assert value(reg, "celery_task_worker_lost_total", name=NAME, **on(W1), queue_name="celery", cause="worker") == 1


def test_pings_from_another_exporter_do_not_count() -> None:
    state, _ = make()
    ev(state, "worker-online", 100.0, hostname=W1, freq=2.0)
    ev(state, "lab-exporter-ping", 150.0, nonce="someone-else")
    assert state.expire(now=150.0) == []
    assert not state.ready.is_set()


@pytest.mark.stack
def test_ledger_gauges_count_lost_and_duplicated_tasks(tmp_path) -> None:
    # A real redis-server for the ledger (chaos' own LedgerServer), written through chaos' own Ledger.
    from lab.ledger import Ledger, LedgerServer
    from lab.ledger_metrics import LedgerCollector

    with LedgerServer(tmp_path / "ledger") as server:
        ledger = Ledger(server.url, "run1")
        ledger.mark_sent(["a", "b", "c", "d"])
        for task_id, times in (("a", 1), ("b", 2), ("c", 0)):
            for _ in range(times):
                attempt, start = ledger.record_start(task_id, "w1@x", 1)
                ledger.record_finish(task_id, attempt, "w1@x", 1, start)
        ledger.record_start("d", "w1@x", 1)  # started, never finished
        ledger.close()
        registry = CollectorRegistry()
        registry.register(LedgerCollector(server.url))
        got = {m: registry.get_sample_value(f"celery_lab_ledger_{m}", {"run": "run1"}) for m in ("sent", "finished")}
        assert got == {"sent": 4, "finished": 2}
        assert registry.get_sample_value("celery_lab_ledger_unfinished", {"run": "run1"}) == 2
        assert registry.get_sample_value("celery_lab_ledger_duplicated", {"run": "run1"}) == 1
    # The ledger's server is gone: the collector yields nothing instead of failing the scrape.
    assert registry.get_sample_value("celery_lab_ledger_sent", {"run": "run1"}) is None


def test_an_unreadable_queue_reports_no_length_and_counts_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # Before: an AMQP queue that could not be read was reported as length 0, indistinguishable from empty.
    exporter = Exporter("amqp://guest:guest@127.0.0.1:1//", ["celery", "other"], 3.0, 2.0)
    reg = exporter.registry
    readings = iter([{"celery": 4, "other": 2}, {"celery": None, "other": 3}])
    monkeypatch.setattr(exporter, "queue_lengths", lambda: next(readings))
    exporter.record_queue_lengths()
    assert value(reg, "celery_queue_length", queue_name="celery") == 4
    exporter.record_queue_lengths()
    assert value(reg, "celery_queue_length", queue_name="celery") is None
    assert value(reg, "celery_exporter_queue_read_errors_total", queue_name="celery") == 1
    assert value(reg, "celery_queue_length", queue_name="other") == 3
    assert value(reg, "celery_exporter_queue_read_errors_total", queue_name="other") == 0


def test_amqp_depth_view_raises_unreadable_instead_of_zero() -> None:
    def broken() -> object:
        raise ConnectionRefusedError("connection refused")

    with pytest.raises(BrokerUnreadable, match="queue celery unreadable"):
        AmqpDepthView(broken, "celery").depth()


def test_every_state_of_a_task_exists_at_0_from_its_first_event_on_a_worker() -> None:
    state, reg = make()
    ev(state, "task-sent", 100.0, uuid="t", name=NAME, queue="celery", hostname="api@host")
    ev(state, "task-received", 100.5, uuid="t", name=NAME, hostname=W1)
    labels = {"name": NAME, **on(W1), "queue_name": "celery"}
    # celery-exporter's convention: the failed series at 0 with an empty exception, so a success ratio
    # succeeded / (succeeded + failed) reads a number on a healthy stack, never "No data".
    assert value(reg, "celery_task_failed_total", **labels, exception="") == 0
    for s in ("started", "succeeded", "retried", "rejected", "revoked"):
        assert value(reg, f"celery_task_{s}_total", **labels) == 0, s
    assert value(reg, "celery_task_received_total", **labels) == 1


def test_publishers_and_restarted_workers_add_no_series_to_the_sent_counter() -> None:
    state, reg = make()
    # Each publishing process has its own node name (gen<pid>@host): a chain's children, an API restart.
    for i, publisher in enumerate(["gen101@host", "gen202@host", "gen303@host", "api@host"]):
        ev(state, "task-sent", 100.0 + i, uuid=f"t{i}", name=NAME, queue="celery", hostname=publisher)
    sent = [s for fam in reg.collect() if fam.name == "celery_task_sent" for s in fam.samples]
    sent = [s for s in sent if s.name == "celery_task_sent_total"]
    assert [(s.labels, s.value) for s in sent] == [({"name": NAME, "hostname": "host", "queue_name": "celery"}, 4)]
    # Worker-side series keep the node name apart: two workers on one host are two series.
    lifecycle(state, "a", W1)
    lifecycle(state, "b", W2)
    assert value(reg, "celery_task_succeeded_total", name=NAME, **on(W1), queue_name="celery") == 1
    assert value(reg, "celery_task_succeeded_total", name=NAME, **on(W2), queue_name="celery") == 1


def test_queue_consumers_are_counted_from_the_inspect_replies() -> None:
    active_queues = {
        "w1@host": [{"name": "celery"}, {"name": "emails"}],
        "w2@host": [{"name": "celery"}],
        "w3@host": [{"name": "celery"}],  # replied to active_queues but not to stats: no processes known
    }
    stats = {"w1@host": {"pool": {"processes": [11, 12]}}, "w2@host": {"pool": {"processes": [21, 22, 23]}}}
    found = QueueConsumers.from_replies(active_queues, stats)
    assert found.workers == {"celery": 3, "emails": 1}
    assert found.processes == {"celery": 5, "emails": 2}
