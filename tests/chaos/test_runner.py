"""The chaos runner's own rules: rollbacks get their spec, and a suite goes on past any error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

import chaos.runner
from chaos.experiment import ExperimentError, load_experiment, task_durations
from chaos.faults import ROLLBACKS, FaultContext
from chaos.runner import run_rollbacks, run_suite


def test_rollbacks_get_their_own_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, Any]] = []
    monkeypatch.setitem(ROLLBACKS, "ensure_workers", lambda _ctx, spec: seen.append(spec) or "ok")
    ctx = FaultContext(stack=None, ledger=None, workers=2)  # type: ignore[arg-type]  # the stub reads neither
    action = {"type": "action", "name": "three workers", "provider": {"type": "rollback", "kind": "ensure_workers",
                                                                      "count": 3}}  # fmt: skip
    # Before: every rollback was called with {}, so ensure_workers' count could never be set.
    assert run_rollbacks(ctx, [action]) == [{"name": "three workers", "result": "ok"}]
    assert seen == [action["provider"]]


def test_a_failed_rollback_is_reported_and_the_others_still_run(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(_ctx: FaultContext, _spec: dict[str, Any]) -> str:
        raise RuntimeError("no broker")

    monkeypatch.setitem(ROLLBACKS, "resume_broker", broken)
    monkeypatch.setitem(ROLLBACKS, "heal_network", lambda _ctx, _spec: "healed")
    ctx = FaultContext(stack=None, ledger=None, workers=1)  # type: ignore[arg-type]
    actions = [
        {"name": "a", "provider": {"type": "rollback", "kind": "resume_broker"}},
        {"name": "b", "provider": {"type": "rollback", "kind": "heal_network"}},
    ]
    assert run_rollbacks(ctx, actions) == [
        {"name": "a", "result": "failed: no broker"},
        {"name": "b", "result": "healed"},
    ]


def test_unknown_rollback_keys_are_rejected(tmp_path: Path) -> None:
    exp = load_experiment("worker-main-sigkill")
    data = exp.data
    data["rollbacks"] = [{"type": "action", "name": "x", "provider": {"type": "rollback", "kind": "ensure_workers",
                                                                       "cuont": 3}}]  # fmt: skip
    path = tmp_path / "typo.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ExperimentError, match="cuont"):
        load_experiment(str(path))


@pytest.mark.stack
def test_a_suite_records_any_error_as_a_fail_and_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Before: only StackError and RedisError were caught, so an httpx error from a network fault aborted the suite.
    calls: list[str] = []

    def failing(exp: Any, *_a: Any, **_k: Any) -> dict[str, Any]:
        calls.append(exp.name)
        raise httpx.ConnectError("the proxy's control port refused")

    monkeypatch.setattr(chaos.runner, "run_on_stack", failing)
    exps = [load_experiment("worker-main-sigkill"), load_experiment("pool-child-sigkill")]
    journals = run_suite(exps, tmp_path / "suite")
    assert calls == ["worker-main-sigkill", "pool-child-sigkill"]  # the second ran after the first errored
    assert [j["verdict"] for j in journals] == ["fail", "fail"]
    assert all("ConnectError" in j["reason"] for j in journals)


def _journal(exp_name: str, ledger: dict[str, int], hit: dict[str, int], faults: bool = True) -> dict[str, Any]:
    base = {"sent": 20, "completed": 20, "lost": 0, "duplicated": 0, "unexpected": 0, "recovered": 0, "reruns": 0}
    return {
        "experiment": exp_name,
        "ledger": {**base, "gone": 0, "parked": 0, "queued": 0, **ledger},
        "hit": {"count": 0, "in_flight_at_fault": 0, "caused_gone": 0, **hit},
        "faults": [{"kind": "x"}] if faults else [],
        "redelivery_s": {"p50": None, "max": None},
        "leftovers": {"queued": 0, "unacked": 0, "gone": 0},
        "backend": {"success": 20, "agrees": True},
        "sink": None,
        "drain": "drained",
        "drain_s": 10.0,
        "settled": True,
    }


def test_a_fault_that_hit_nothing_in_flight_is_not_a_pass() -> None:
    # Before: worker-sigterm, broker-restart-aof and network-partition passed with nothing hit and no re-run.
    exp = load_experiment("worker-sigterm")
    _, verdict, reason = chaos.runner.evaluate(_journal(exp.name, {}, {}), exp.data)
    assert (verdict, reason.split(":")[0]) == ("fail", "the fault hit no in-flight work")
    _, verdict, _ = chaos.runner.evaluate(_journal(exp.name, {}, {"in_flight_at_fault": 3}), exp.data)
    assert verdict == "pass"


def test_a_control_passes_only_on_loss_its_fault_caused_and_that_is_gone() -> None:
    exp = load_experiment("control-no-reject-on-worker-lost")
    parked = _journal(exp.name, {"lost": 2, "completed": 18, "parked": 2}, {"count": 2})
    _, verdict, reason = chaos.runner.evaluate(parked, exp.data)
    assert verdict == "fail" and "2 parked unacked" in reason  # they come back: not a loss
    unexplained = _journal(exp.name, {"lost": 1, "completed": 19, "gone": 1}, {"count": 1, "caused_gone": 0})
    assert chaos.runner.evaluate(unexplained, exp.data)[1] == "fail"
    caused = _journal(exp.name, {"lost": 1, "completed": 19, "gone": 1}, {"count": 1, "caused_gone": 1})
    assert chaos.runner.evaluate(caused, exp.data)[1:] == ("pass", "control: 1 lost for good, taken by the fault")


@pytest.mark.parametrize(
    ("kind", "option"),
    [("restart_broker", "replace"), ("pause_broker", "signal"), ("kill_pool_child", "duration_s")],
)
def test_a_fault_option_the_fault_does_not_use_is_refused(tmp_path: Path, kind: str, option: str) -> None:
    data = load_experiment("worker-main-sigkill").data
    fault = next(a for a in data["method"] if a["provider"]["type"] == "fault")
    value = {"replace": True, "signal": "SIGKILL", "duration_s": 1}[option]
    fault["provider"] = {"type": "fault", "kind": kind, option: value}
    path = tmp_path / "unused.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ExperimentError, match=f"does not use {option}"):
        load_experiment(str(path))


def test_task_durations_are_drawn_per_task_with_a_seed() -> None:
    drawn = task_durations({"uniform": [0.2, 0.5]}, 200, "run-1")
    assert all(0.2 <= d <= 0.5 for d in drawn)
    assert len(set(drawn)) > 100  # drawn per task, not one value
    assert drawn == task_durations({"uniform": [0.2, 0.5]}, 200, "run-1")  # replayable from the journal's run
    assert task_durations(0.05, 3, "x") == [0.05, 0.05, 0.05]


def test_a_uniform_range_upside_down_is_refused(tmp_path: Path) -> None:
    data = load_experiment("pool-child-sigkill").data
    data["configuration"]["task_duration_s"] = {"uniform": [0.5, 0.2]}
    path = tmp_path / "upside-down.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ExperimentError, match="low <= high"):
        load_experiment(str(path))
