"""Tests in pytest-celery's style (``celery_setup`` and its nodes) on real processes: redis-server, celery worker.

Only pytest-celery's node API is used, so with LAB_CELERY_NODES=docker the same tests run on its Docker nodes.
Tasks are the reference app's, sent by name through ``celery_setup.app``.
"""

from __future__ import annotations

import signal

import pytest
from pytest_celery import CeleryTestSetup

from lab.procs import StackError, wait_until
from tests.plugins.pytest_celery_local import parse_signal

pytestmark = pytest.mark.stack

PROCESS_ITEM = "app.tasks.workflows.process_item"
AGGREGATE = "app.tasks.workflows.aggregate_results"
RESULT_TIMEOUT = 60


def answering(setup: CeleryTestSetup, timeout: float = 10) -> list[str]:
    """Node names answering a control ping to the worker node (returns as soon as it answers)."""
    hostname = setup.worker.hostname()
    return [name for reply in setup.app.control.ping(destination=[hostname], timeout=timeout) or [] for name in reply]


def test_round_trip_and_logs(celery_setup: CeleryTestSetup):
    assert celery_setup.ready(ping=False, control=True, docker=True)
    assert answering(celery_setup) == [celery_setup.worker.hostname()]
    assert celery_setup.app.conf.broker_url == celery_setup.broker.config()["host_url"]
    assert celery_setup.app.conf.result_backend == celery_setup.backend.config()["host_url"]

    result = celery_setup.app.send_task(PROCESS_ITEM, args=[7])
    assert result.get(timeout=RESULT_TIMEOUT) == 49
    total = celery_setup.app.send_task(AGGREGATE, args=[[1, 4, 9]]).get(timeout=RESULT_TIMEOUT)
    assert total == {"count": 3, "total": 14}

    # The worker's own log says it ran this very task; the broker node's log is redis-server's.
    celery_setup.worker.assert_log_exists(f"{PROCESS_ITEM}[{result.id}] succeeded")
    celery_setup.worker.assert_log_does_not_exist(f"{PROCESS_ITEM}[{result.id}] raised")
    celery_setup.broker.assert_log_exists("Ready to accept connections")


def test_worker_kill_restart_and_shutdown(no_leftovers: None, celery_setup: CeleryTestSetup):
    # no_leftovers first: it is set up before the Stack and checks after the Stack stopped that nothing is left.
    worker = celery_setup.worker
    assert worker.container.status == "running"
    pids_before = {p["pid"] for p in worker.get_running_processes_info(["pid"])}
    assert len(pids_before) >= 3  # the main process and its 2 prefork pool children

    worker.kill()  # SIGKILL, pytest-celery's default: the whole worker goes, pool children included
    assert worker.container.status == "exited"
    assert answering(celery_setup, timeout=2) == []

    # Sent while no worker runs: the message waits in the broker and the restarted worker takes it.
    pending = celery_setup.app.send_task(PROCESS_ITEM, args=[12])
    worker.restart()
    assert worker.container.status == "running"
    assert answering(celery_setup) == [worker.hostname()]
    pids_after = {p["pid"] for p in worker.get_running_processes_info(["pid"])}
    assert pids_after
    assert not pids_after & pids_before  # new processes, not the old ones answering
    assert pending.get(timeout=RESULT_TIMEOUT) == 144
    worker.assert_log_exists(f"{PROCESS_ITEM}[{pending.id}] succeeded")

    celery_setup.broker.restart()  # same address; the worker reconnects and results flow again
    assert celery_setup.broker.container.status == "running"
    assert celery_setup.app.send_task(PROCESS_ITEM, args=[5]).get(timeout=RESULT_TIMEOUT) == 25

    worker.kill(signal="SIGTERM")  # warm shutdown: the worker logs it and exits by itself
    wait_until(lambda: worker.container.status == "exited", timeout=RESULT_TIMEOUT, what="the worker to exit")
    worker.assert_log_exists("worker: Warm shutdown")


def test_signal_names_parse():
    assert parse_signal("SIGKILL") == signal.SIGKILL
    assert parse_signal("term") == signal.SIGTERM
    assert parse_signal(None) == signal.SIGKILL
    assert parse_signal(10) == 10
    with pytest.raises(StackError, match="unknown signal"):
        parse_signal("SIGNOPE")
