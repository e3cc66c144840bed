"""The same chaos experiments with RabbitMQ as the broker: a node of the lab's own (lab/rabbitmq.py).

Parametrised over the fault methods like test_experiments.py, through the same runner. What differs from
Redis, and is asserted: a worker that dies loses its AMQP connection and the broker requeues what it held at
once, so a SIGKILLed worker's tasks come back well within the visibility timeout that Redis must wait for, and
no fetch window loses a message (lost == 0 strictly).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from chaos.experiment import load_experiment
from chaos.runner import _mismatch, broker_leftovers, run_experiment, stack_config
from lab.ledger import LedgerServer
from lab.probes import LEDGER_TASK
from lab.procs import StackError, wait_until
from lab.rabbitmq import require_rabbitmq
from lab.stack import Stack
from tests.chaos.test_experiments import EXPERIMENT_FOR, INTERRUPTING, assert_journal_shape, run_with_ledger

try:
    require_rabbitmq()
    MISSING = ""
except StackError as exc:
    MISSING = str(exc)

pytestmark = [pytest.mark.stack, pytest.mark.skipif(bool(MISSING), reason=MISSING)]

SHARED = "worker-main-sigkill"
FAULTS = [*EXPERIMENT_FOR, "restart_broker"]
EXPERIMENTS = {**EXPERIMENT_FOR, "restart_broker": "broker-restart-aof"}


@pytest.fixture(scope="module")
def rabbit_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, str]]:
    run_dir = tmp_path_factory.mktemp("chaos-rabbitmq")
    with LedgerServer(run_dir / "ledger") as server:
        cfg = stack_config(load_experiment(SHARED).on_broker("rabbitmq"), run_dir / "stack", server.url)
        with Stack(cfg) as stack:
            yield stack, server.url


@pytest.mark.parametrize("fault", FAULTS)
def test_fault_loses_nothing_on_rabbitmq(fault: str, rabbit_stack: tuple[Stack, str]) -> None:
    stack, url = rabbit_stack
    exp = load_experiment(EXPERIMENTS[fault]).on_broker("rabbitmq")
    assert _mismatch(stack, exp) is None  # the shared Stack is what the experiment file asks for
    journal = run_with_ledger(stack, url, exp)
    assert_journal_shape(journal)
    assert journal["broker"] == "rabbitmq"
    assert stack.settings.celery_broker_url.startswith("amqp://")
    counts = journal["ledger"]
    assert [f["kind"] for f in journal["faults"]] == [a["provider"]["kind"] for a in exp.faults]
    assert fault in {f["kind"] for f in journal["faults"]}
    assert counts["lost"] == 0, journal["details"]  # no BRPOP-style fetch window on AMQP
    assert counts["unexpected"] == 0
    assert counts["completed"] == counts["sent"] == exp.config["tasks"]
    assert journal["backend"]["success"] == counts["completed"]
    assert journal["verdict"] == "pass", journal["reason"]
    if fault in INTERRUPTING:
        assert counts["recovered"] >= 1, "the fault hit no running task: nothing was tested"
    if fault == "kill_worker_main":
        # Requeued on connection loss, not after the visibility timeout Redis needs.
        assert journal["redelivery_s"]["max"] < journal["config"]["visibility_timeout_s"], journal["redelivery_s"]
    if fault == "restart_broker":
        assert journal["faults"][0]["target"] == "rabbitmq"


def test_leftovers_are_read_from_rabbitmq(rabbit_stack: tuple[Stack, str]) -> None:
    """Queued ids come from the management API (peeked, requeued), held ones from the live workers."""
    stack, _url = rabbit_stack
    app = stack.celery
    held_id, queued_ids = str(uuid.uuid4()), [str(uuid.uuid4()) for _ in range(3)]
    app.control.cancel_consumer(stack.queue, reply=True, timeout=5)
    try:
        for task_id in queued_ids:
            app.send_task(LEDGER_TASK, kwargs={"run": "leftovers", "duration_s": 0}, task_id=task_id)
        queued, _held, error = wait_until(
            lambda: (r := broker_leftovers(stack))[0] >= set(queued_ids) and r,
            timeout=15,
            what="the peeked messages",
        )
        assert error is None
        assert queued == set(queued_ids)
    finally:
        app.control.add_consumer(stack.queue, reply=True, timeout=5)
    app.send_task(LEDGER_TASK, kwargs={"run": "leftovers", "duration_s": 3}, task_id=held_id)
    _queued, held, _error = wait_until(
        lambda: held_id in (r := broker_leftovers(stack))[1] and r, timeout=15, what="the running task as held"
    )
    assert held_id in held
    for task_id in [*queued_ids, held_id]:  # peeking requeued them: nothing was lost by looking
        assert app.AsyncResult(task_id).get(timeout=30) is not None


def test_control_catches_loss_on_rabbitmq(tmp_path: Path, no_leftovers: None) -> None:
    exp = load_experiment("control-no-reject-on-worker-lost").on_broker("rabbitmq")
    journal = run_experiment(exp, tmp_path / exp.name)
    assert journal["broker"] == "rabbitmq"
    assert journal["ledger"]["lost"] > 0, "the control's loss went undetected"
    assert journal["leftovers"]["gone"] == journal["ledger"]["lost"]
    assert journal["verdict"] == "pass", journal["reason"]
