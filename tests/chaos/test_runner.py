"""The chaos runner's own rules: rollbacks get their spec, and a suite goes on past any error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

import chaos.runner
from chaos.experiment import ExperimentError, load_experiment
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
    path.write_text(__import__("json").dumps(data))
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
