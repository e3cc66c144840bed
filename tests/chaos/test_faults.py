"""Faults on a real Stack: a fault that fails half-way leaves nothing frozen."""

from __future__ import annotations

import uuid
from pathlib import Path

import psutil
import pytest

import chaos.faults
from chaos.faults import FaultContext, kill_worker_mid_fetch
from chaos.runner import stack_extras
from lab.ledger import Ledger, LedgerServer

pytestmark = pytest.mark.stack


def test_a_mid_fetch_kill_that_fails_half_way_leaves_the_worker_running(
    tmp_path: Path, stack_factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    with LedgerServer(tmp_path / "ledger") as server:
        stack = stack_factory(workers=1, api=False, smtp=False, ai_stub=False, **stack_extras(server.url))
        ledger = Ledger(server.url, run=uuid.uuid4().hex[:8])
        worker = stack.workers["w1"]

        def publish_fails(*_a: object, **_k: object) -> None:
            # Between SIGSTOP and SIGKILL: the worker is frozen right now.
            assert psutil.Process(worker.proc.pid).status() == psutil.STATUS_STOPPED
            raise ConnectionError("the broker went away mid-fault")

        monkeypatch.setattr(chaos.faults, "send_probe", publish_fails)
        try:
            with pytest.raises(ConnectionError):
                kill_worker_mid_fetch(FaultContext(stack=stack, ledger=ledger, workers=1), {"target": "w1"})
        finally:
            ledger.close()
        # Before: the worker stayed SIGSTOPped, looked alive, and nothing ever replaced it.
        assert worker.proc.alive()
        assert psutil.Process(worker.proc.pid).status() != psutil.STATUS_STOPPED
        assert stack.celery.send_task("app.tasks.workflows.process_item", args=[3]).get(timeout=30) == 9


def test_a_broker_restart_stays_down_for_its_duration(tmp_path: Path, stack_factory) -> None:
    # Before: duration_s was accepted by the schema and ignored; the broker was back within 0.2 s.
    with LedgerServer(tmp_path / "ledger") as server:
        stack = stack_factory(workers=1, api=False, smtp=False, ai_stub=False, **stack_extras(server.url))
        ledger = Ledger(server.url, run=uuid.uuid4().hex[:8])
        old_pid = stack.procs["redis"].pid
        try:
            record = chaos.faults.restart_broker(
                FaultContext(stack=stack, ledger=ledger, workers=1), {"signal": "SIGKILL", "duration_s": 2}
            )
        finally:
            ledger.close()
        assert record.detail["exited"] is True
        assert record.detail["outage_s"] == 2
        assert record.detail["down_s"] >= 2  # measured from the kill to the new server answering PING
        assert stack.procs["redis"].pid != old_pid
        assert stack.redis().ping()
