"""Chaos experiments end to end: real redis-servers (broker and ledger) and real celery workers, killed.

Parametrised over the fault methods (as Celery's t/smoke failover tests parametrise kill methods), through
the same runner as ``lab chaos``. The no-loss faults share one Stack, exactly the configuration their
experiment files declare; the controls and the visibility-timeout experiment start their own.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

import chaos.cli
import chaos.runner
from chaos.experiment import Experiment, list_experiments, load_experiment
from chaos.runner import demo_section, run_experiment, run_on_stack, stack_config, stack_key
from lab.cli import app
from lab.ledger import Ledger, LedgerServer
from lab.stack import Stack
from tests.support import junit_report

SHARED = "worker-main-sigkill"
# SIGTERM and SIGQUIT are measured live by the matrix's CI cells (redis/sigterm/reference,
# redis/sigquit/brpop-fetch, redis/sigquit-soft-shutdown/reference: tests/chaos/test_matrix.py).
NO_LOSS_FAULTS = ["kill_pool_child", "kill_worker_main", "pause_broker"]
EXPERIMENT_FOR = {
    "kill_pool_child": "pool-child-sigkill",
    "kill_worker_main": "worker-main-sigkill",
    "pause_broker": "broker-pause",
}
# Faults that interrupt running tasks: the run only tests recovery if some task was really hit.
INTERRUPTING = {"kill_pool_child", "kill_worker_main"}
# The controls run live here; acks-early, no-reject-on-worker-lost and broker-no-persistence are measured live
# by the matrix's CI cells instead (tests/chaos/test_matrix.py: redis/worker-main-sigkill/acks-early,
# redis/pool-child-sigkill/acks-late-no-reject and redis/broker-restart-no-persistence/reference), and
# tests/chaos/test_matrix_doc.py checks that each control file and its matrix cell agree.
CONTROLS = [
    "control-brpop-fetch-window",
]
JOURNAL_KEYS = {"experiment", "broker", "config", "faults", "ledger", "redelivery_s", "leftovers", "expected"}
JOURNAL_KEYS |= {"verdict", "hit", "parked"}
LEDGER_KEYS = {"sent", "completed", "lost", "duplicated", "unexpected", "recovered", "reruns"}
LEDGER_KEYS |= {"gone", "parked", "queued"}  # lost, split by where the broker says each lost id is


@pytest.fixture(scope="module")
def shared_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, str]]:
    run_dir = tmp_path_factory.mktemp("chaos-shared")
    with LedgerServer(run_dir / "ledger") as server:
        cfg = stack_config(load_experiment(SHARED), run_dir / "stack", server.url)
        with Stack(cfg) as stack:
            yield stack, server.url


def run_with_ledger(stack: Stack, ledger_url: str, exp: Experiment) -> dict:
    """``exp`` on a running Stack, in a ledger namespace of its own."""
    ledger = Ledger(ledger_url, run=uuid.uuid4().hex[:12])
    try:
        return run_on_stack(exp, stack, ledger)
    finally:
        ledger.close()


def assert_journal_shape(journal: dict) -> None:
    assert set(journal) >= JOURNAL_KEYS
    assert set(journal["ledger"]) == LEDGER_KEYS
    assert set(journal["redelivery_s"]) == {"p50", "max"}
    assert set(journal["leftovers"]) == {"queued", "unacked", "gone"}
    for fault in journal["faults"]:
        assert {"kind", "target", "at"} <= set(fault)
    assert journal["verdict"] in {"pass", "fail"}


@pytest.mark.parametrize("fault", NO_LOSS_FAULTS)
def test_fault_loses_nothing(fault: str, shared_stack: tuple[Stack, str]) -> None:
    stack, url = shared_stack
    exp = load_experiment(EXPERIMENT_FOR[fault])
    # The shared Stack must be exactly the one the experiment file asks for, or this would test something else.
    assert stack_key(exp) == stack_key(load_experiment(SHARED))
    journal = run_with_ledger(stack, url, exp)
    assert_journal_shape(journal)
    ledger_counts = journal["ledger"]
    assert [f["kind"] for f in journal["faults"]] == [a["provider"]["kind"] for a in exp.faults]
    assert all(f["trigger"]["reached"] for f in journal["faults"]), journal["faults"]
    assert ledger_counts["unexpected"] == 0
    # Strict for every fault, a worker kill too: the reliable fetch (app/core/broker.py) leaves no window.
    assert ledger_counts["lost"] == 0, journal["details"]
    assert ledger_counts["sent"] == exp.config["tasks"]
    assert ledger_counts["completed"] == ledger_counts["sent"] - ledger_counts["lost"]
    assert journal["leftovers"]["queued"] == journal["leftovers"]["unacked"] == 0
    assert journal["verdict"] == "pass", journal["reason"]
    # An independent count: the result backend holds a SUCCESS for every id the ledger saw complete.
    assert journal["backend"]["success"] == ledger_counts["completed"]
    if fault in INTERRUPTING:
        assert ledger_counts["recovered"] >= 1, "the fault hit no running task: nothing was tested"
        # Recovered ids include reserved messages that never started on the killed worker (no rerun).
        assert journal["details"]["hit"] >= ledger_counts["recovered"]
        assert journal["redelivery_s"]["max"] is not None
    # The fault landed: a signalled worker really exited (on its own, not forced) and was replaced; a paused
    # broker was really stopped. Without this a fault that did nothing would pass as "nothing lost".
    detail = journal["faults"][0]["detail"]
    if fault == "kill_worker_main":
        assert detail["exited"] is True and not detail.get("forced"), detail
        assert detail["replacement"] in stack.workers, detail
    if fault == "pause_broker":
        assert detail["paused"] is True and detail["duration_s"] > 0, detail
    if fault == "kill_pool_child":
        assert detail["busy"] is True, detail  # it killed a child that was running a probe
    if fault == "kill_worker_main":
        # Redelivery waits for the visibility timeout, counted from when the killed worker fetched the message.
        assert journal["redelivery_s"]["p50"] >= journal["config"]["visibility_timeout_s"] - 1


NETWORK = {"partition_network": "network-partition", "reset_connections": "network-reset"}


@pytest.fixture(scope="module")
def net_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, str]]:
    """Workers behind lab/netproxy.py (no netem in this kernel): the Stack both network experiments declare."""
    run_dir = tmp_path_factory.mktemp("chaos-network")
    exp = load_experiment("network-partition")
    with LedgerServer(run_dir / "ledger") as server, Stack(stack_config(exp, run_dir / "stack", server.url)) as stack:
        yield stack, server.url


@pytest.mark.parametrize("fault", sorted(NETWORK))
def test_network_fault_loses_nothing(fault: str, net_stack: tuple[Stack, str]) -> None:
    stack, url = net_stack
    exp = load_experiment(NETWORK[fault])
    assert stack_key(exp) == stack_key(load_experiment("network-partition"))
    assert stack.worker_env["CELERY_BROKER_URL"] != stack.env["CELERY_BROKER_URL"]  # the workers' go via the proxy
    journal = run_with_ledger(stack, url, exp)
    assert_journal_shape(journal)
    assert [f["kind"] for f in journal["faults"]] == [fault]
    counts = journal["ledger"]
    assert counts["lost"] == 0, journal["details"]
    assert counts["completed"] == counts["sent"] == exp.config["tasks"]
    assert journal["backend"]["success"] == counts["completed"]
    assert journal["verdict"] == "pass", journal["reason"]
    if fault == "partition_network":
        # Longer than the visibility timeout: the sweep restores what the cut-off workers held (duplicates).
        assert journal["faults"][0]["detail"]["proxy"]["partitions"] >= 1
        assert journal["faults"][0]["detail"]["duration_s"] > journal["config"]["visibility_timeout_s"]
    else:
        assert journal["faults"][0]["detail"]["reset"] > 0, "no connection was reset: nothing was tested"


def test_demo_section_on_a_prepared_stack(shared_stack: tuple[Stack, str]) -> None:
    stack, _url = shared_stack
    console = Console(file=io.StringIO(), width=120)
    journal = demo_section(stack, console)
    assert_journal_shape(journal)
    assert journal["experiment"] == "demo-worker-kill"
    assert journal["verdict"] == "pass", journal["reason"]
    assert journal["ledger"]["lost"] == 0
    assert "PASS" in console.file.getvalue()


def test_broker_restart_with_aof_loses_nothing(tmp_path: Path, no_leftovers: None) -> None:
    exp = load_experiment("broker-restart-aof")
    journal = run_experiment(exp, tmp_path / exp.name)
    assert_journal_shape(journal)
    assert [f["kind"] for f in journal["faults"]] == ["restart_broker"]
    assert journal["faults"][0]["detail"]["aof"] is True
    assert journal["ledger"]["lost"] == 0, journal["details"]
    assert journal["ledger"]["completed"] == exp.config["tasks"]
    assert journal["verdict"] == "pass", journal["reason"]
    # Not asserted: the result backend shares the broker's Redis, so results written while it is down are gone.


def test_the_apps_own_email_task_as_probe(tmp_path: Path, no_leftovers: None) -> None:
    """The ledger follows the app's real send_welcome_email through signal handlers; the SMTP sink counts
    independently what was delivered, and how many users got their email twice."""
    exp = load_experiment("app-email-worker-kill")
    journal = run_experiment(exp, tmp_path / exp.name)
    assert_journal_shape(journal)
    assert journal["config"]["task"] == "app.tasks.email.send_welcome_email"
    counts, sink = journal["ledger"], journal["sink"]
    assert counts["sent"] == exp.config["tasks"]
    assert counts["lost"] == 0, journal["details"]
    assert counts["recovered"] >= 1, "the kill hit no running task: nothing was tested"
    assert journal["verdict"] == "pass", journal["reason"]
    # Independent counts: every completed task has its SUCCESS result and delivered its email.
    assert journal["backend"]["success"] == counts["completed"]
    assert sink["delivered"] == counts["completed"], sink
    assert sink["agrees"]
    # A task that finished twice sent twice; one killed after sending but before finishing sent twice too.
    assert sink["duplicate_emails"] >= counts["duplicated"]


def test_reliable_fetch_keeps_the_message_a_killed_worker_fetched(tmp_path: Path, no_leftovers: None) -> None:
    """The control-brpop-fetch-window fault with the reference settings: the message waits in the dead
    consumer's inflight list and the replacement's sweep brings it back after the visibility timeout."""
    exp = load_experiment("worker-kill-mid-fetch")
    assert exp.config["overrides"].get("CELERY_BROKER_RELIABLE_FETCH", True) is True
    run_dir = tmp_path / exp.name
    with LedgerServer(run_dir / "ledger") as server:
        ledger = Ledger(server.url, run=uuid.uuid4().hex[:12])
        try:
            with Stack(stack_config(exp, run_dir / "stack", server.url)) as stack:
                journal = run_on_stack(exp, stack, ledger)
            finishes = {e.id: e.finish for e in ledger.read().finishes}
        finally:
            ledger.close()
    assert_journal_shape(journal)
    fault = journal["faults"][0]
    assert fault["kind"] == "kill_worker_mid_fetch"
    assert journal["ledger"]["lost"] == 0, journal["details"]
    assert journal["ledger"]["completed"] == journal["ledger"]["sent"] == exp.config["tasks"] + 1
    assert journal["verdict"] == "pass", journal["reason"]
    # The bait ran, on the replacement, once the dead consumer had been silent for the visibility timeout.
    waited = (finishes[fault["detail"]["bait"]] or 0) - fault["at_epoch"]
    assert waited >= journal["config"]["visibility_timeout_s"] - 1.5, waited


@pytest.mark.parametrize("name", CONTROLS)
def test_control_detects_loss(name: str, tmp_path: Path, no_leftovers: None) -> None:
    exp = load_experiment(name)
    assert exp.expected == "loss"
    journal = run_experiment(exp, tmp_path / name)
    assert_journal_shape(journal)
    assert journal["ledger"]["lost"] > 0, "the control's loss went undetected"
    assert journal["verdict"] == "pass", journal["reason"]
    assert not next(p for p in journal["hypothesis"] if p["metric"] == "ledger.lost")["met"]
    assert journal["leftovers"]["gone"] == journal["ledger"]["lost"]
    assert journal["ledger"]["gone"] == journal["ledger"]["lost"] and journal["ledger"]["parked"] == 0
    assert journal["hit"]["caused_gone"] > 0  # the loss is the fault's, not a deadline's
    if "kill_pool_child" in [f["kind"] for f in journal["faults"]]:
        assert all(f["detail"]["busy"] for f in journal["faults"]), journal["faults"]
        # Every lost task is one a killed child was running: its message was acknowledged, never requeued.
        assert journal["details"]["hit"] >= journal["ledger"]["lost"]
    if name == "control-brpop-fetch-window":
        # Exactly the message the frozen worker's BRPOP took: never started anywhere, in no list, no hash.
        assert journal["details"]["lost_ids"] == [journal["faults"][0]["detail"]["bait"]]
        assert journal["ledger"]["recovered"] == 0
        assert (tmp_path / name / "journal.json").is_file()


def test_failed_verdict_exits_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The exit code follows the journal's verdict. The verdict itself is covered by the real runs above;
    # here a control whose ledger found no loss is evaluated by the real evaluate() and must exit 1.
    exp = load_experiment("control-acks-early-pool-child")
    counts = {"sent": 60, "completed": 60, "lost": 0, "duplicated": 0, "unexpected": 0, "recovered": 0, "reruns": 0}

    def fake_run(experiment, run_dir, reporter=None, *, profile=None, app=None):
        journal = {
            "experiment": experiment.name,
            "ledger": counts,
            "redelivery_s": {"p50": None, "max": None},
            "leftovers": {"queued": 0, "unacked": 0, "gone": 0},
            "faults": [],
            "backend": {"success": 60},
            "drain": "drained",
            "drain_s": 1.0,
            "expected": experiment.expected,
        }
        journal["hypothesis"], journal["verdict"], journal["reason"] = chaos.runner.evaluate(journal, experiment.data)
        return journal

    monkeypatch.setattr(chaos.cli, "run_experiment", fake_run)
    monkeypatch.setenv("LAB_RESULTS_DIR", str(tmp_path))
    out, junit = tmp_path / "journal.json", tmp_path / "junit.xml"
    result = CliRunner().invoke(app, ["chaos", "run", exp.name, "--json", str(out), "--junit", str(junit)])
    assert result.exit_code == 1, result.output
    journal = json.loads(out.read_text())
    assert journal["verdict"] == "fail"
    assert journal["reason"] == "control: expected loss, the ledger found none"
    (case,) = junit_report(junit)[f"chaos {exp.name}"]  # the failing verdict is a <failure> CI shows
    assert case["failure"].startswith("control: expected loss, the ledger found none (expected loss; measured")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["chaos", "run", "no-such-experiment"], "not found"),
        (["chaos", "run", "worker-main-sigkill", "--config", "no-such-profile"], "not found"),
        (["chaos", "suite", "--tag", "no-such-tag"], "no experiment is tagged"),
        (["chaos", "run", "worker-main-sigkill", "--broker", "kafka"], "choose one of redis, rabbitmq"),
        (["chaos", "run", "visibility-timeout-duplicates", "--broker", "rabbitmq"], "specific to redis"),
    ],
)
def test_bad_input_exits_2(args: list[str], needle: str) -> None:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert needle in result.output


def test_invalid_experiment_file_exits_2(tmp_path: Path) -> None:
    exp = json.loads(load_experiment(SHARED).path.read_text())
    exp["method"][1]["provider"]["kind"] = "unplug_the_datacentre"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(exp))
    result = CliRunner().invoke(app, ["chaos", "run", str(path)])
    assert result.exit_code == 2, result.output
    assert "method/1/provider/kind" in result.output


def test_list_shows_every_experiment() -> None:
    result = CliRunner().invoke(app, ["chaos", "list", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["name"] for r in rows] == list_experiments()
    ci = {r["name"]: r for r in rows if "ci" in r["tags"]}
    assert set(CONTROLS) <= set(ci)
    assert all(ci[c]["expected"] == "loss" for c in CONTROLS)
    assert set(EXPERIMENT_FOR.values()) <= set(ci)


def test_random_durations_and_a_random_pool_child_victim(tmp_path: Path, no_leftovers: None) -> None:
    data = load_experiment("pool-child-sigkill").data
    data["configuration"]["task_duration_s"] = {"uniform": [0.05, 0.4]}
    for action in data["method"]:
        if action["provider"]["type"] == "fault":
            action["provider"]["victim"] = "random"
    path = tmp_path / "pool-child-random.json"
    path.write_text(json.dumps(data))
    journal = run_experiment(load_experiment(str(path)), tmp_path / "run")
    assert_journal_shape(journal)
    assert journal["config"]["task_duration_s"] == {"uniform": [0.05, 0.4]}
    assert all(f["detail"]["victim"] == "random" and f["detail"]["busy"] for f in journal["faults"])
    assert journal["hit"]["count"] >= 1
    assert journal["verdict"] == "pass", journal["reason"]
