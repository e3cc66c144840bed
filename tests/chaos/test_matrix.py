"""The reliability matrix: its cells, their figures and verdicts (pure), and the CI subset on real processes.

The CI subset runs through the CLI exactly as users run it, against the committed doc: a cell whose outcome
contradicts the committed one (and is not marked unstable on either side), or whose fault hit nothing, fails.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from chaos.experiment import ExperimentError
from chaos.matrix import (
    CI_CELLS,
    CI_LEFT_OUT,
    CONFIGS,
    FAULTS,
    PAST_VISIBILITY_S,
    POOL_CHILD_VISIBILITY_S,
    SCALED_VISIBILITY_S,
    select,
)
from chaos.matrix import cell_experiment as build
from chaos.matrix_doc import RECOMMENDATIONS, Evidence, cell_text, merge, recommendation_failures, render
from chaos.matrix_figures import disagreements, outcome, repeat_figures, span, summarize
from lab.apps import AppTarget
from lab.cli import app
from lab.profiles import ROOT
from tests.support import junit_report

DOC = ROOT / "docs" / "reliability-matrix.md"


def figures(**harms: int) -> dict:
    base = {"valid": True, "lost": 0, "twice": 0, "parked": 0, "queued": 0, "reruns": 0}
    return {**base, **harms}


def test_every_fault_meets_every_config_on_redis_and_the_rest_say_why_not() -> None:
    cells = select(brokers="redis,rabbitmq")
    assert len(cells) == 2 * len(FAULTS) * len(CONFIGS)
    redis_na = [c.id for c in cells if c.broker == "redis" and c.not_applicable]
    # Only the pause past a 1 h visibility timeout cannot run (it would take an hour): its reason says so.
    assert redis_na == ["redis/broker-pause-past-visibility/visibility-default-1h"]
    for cell in cells:
        if cell.broker == "rabbitmq" and cell.config.id in {"visibility-default-1h", "brpop-fetch", "stock-kombu"}:
            assert cell.not_applicable and "Redis" in cell.not_applicable
        if why := cell.not_applicable:
            assert len(why) > 20


def test_every_measurable_cell_is_a_valid_experiment() -> None:
    for cell in select(brokers="redis,rabbitmq"):
        if cell.not_applicable:
            continue
        exp = build(cell, 2)
        assert exp.name == f"{cell.id}/r2"
        cfg = exp.config
        assert cfg["broker"] == cell.broker and cfg["separate_backend"] is True
        assert cfg["overrides"]["CELERY_VISIBILITY_TIMEOUT"] == cell.visibility_s
        faults = exp.faults
        assert len(faults) == (0 if cell.fault.id == "none" else 1)
        if cell.fault.past_visibility:
            assert faults[0]["provider"]["duration_s"] == cell.visibility_s + PAST_VISIBILITY_S
        # A pool-child kill outlasts billiard's lost-child report on the scaled timeout only; a config's own
        # timeout (1 s, 1 h) is what that config measures.
        if cell.fault.id == "pool-child-sigkill" and cell.config.visibility_s == SCALED_VISIBILITY_S:
            assert cell.visibility_s == POOL_CHILD_VISIBILITY_S and cfg["horizon_s"] > POOL_CHILD_VISIBILITY_S
        else:
            assert cell.visibility_s == cell.config.visibility_s


def test_the_ci_subset_has_each_fault_and_each_config() -> None:
    cells = select(tag="ci")
    assert [c.id for c in cells] == sorted(CI_CELLS, key=[c.id for c in select()].index)
    assert {c.fault.id for c in cells} | set(CI_LEFT_OUT) == {f.id for f in FAULTS}
    assert not {c.fault.id for c in cells} & set(CI_LEFT_OUT) and all(len(why) > 40 for why in CI_LEFT_OUT.values())
    assert {c.config.id for c in cells} == {c.id for c in CONFIGS}
    assert all(c.not_applicable is None for c in cells)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"brokers": "redis,kafka"}, "--brokers kafka"),
        ({"faults": "sigkill"}, "--faults sigkill"),
        ({"configs": ","}, "--configs (nothing)"),
        ({"tag": "nightly"}, "--tag nightly"),
        ({"brokers": "rabbitmq", "tag": "ci"}, "no matrix cell"),
    ],
)
def test_bad_selections_say_what_is_wrong(kwargs: dict, needle: str) -> None:
    with pytest.raises(ExperimentError, match=None) as info:
        select(**kwargs)
    assert needle in str(info.value)


def test_bad_input_exits_2_before_anything_starts(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["chaos", "matrix", "--faults", "nope"])
    assert result.exit_code == 2 and "--faults nope" in result.output
    result = CliRunner().invoke(app, ["chaos", "matrix", "--against", str(tmp_path / "missing.md")])
    assert result.exit_code == 2 and "cannot read the matrix data" in result.output


def test_on_a_users_app_the_configs_are_its_own_and_overlays_and_no_lab_override_applies(tmp_path: Path) -> None:
    long_wait = tmp_path / "long-visibility.toml"
    long_wait.write_text("broker_transport_options = {visibility_timeout = 3600}\n")
    overlay = ROOT / "examples" / "external_app" / "lab" / "acks-early.toml"
    shop = AppTarget.from_options("examples.external_app.celery:app")
    cells = {c.id: c for c in select(app=shop, configs=f"app,{overlay},{long_wait}")}
    assert len(cells) == 3 * len(FAULTS)
    assert {c.split("/")[2] for c in cells} == {"app", "acks-early", "long-visibility"}
    # The shop's own 6 s visibility timeout: its pause runs (and the stall horizon waits past a sweep)...
    assert cells["redis/broker-pause-past-visibility/app"].not_applicable is None
    pause = build(cells["redis/broker-pause-past-visibility/app"])
    assert pause.faults[0]["provider"]["duration_s"] == 6 + PAST_VISIBILITY_S and pause.config["horizon_s"] >= 10
    # ...an hour's would take an hour.
    assert "would last over 3600 s" in str(cells["redis/broker-pause-past-visibility/long-visibility"].not_applicable)
    kill = build(cells["redis/worker-main-sigkill/acks-early"], probe={"task": "shop.record_order", "args": ["{id}"]})
    assert kill.config["overrides"] == {} and kill.config["probe"]["task"] == "shop.record_order"
    assert cells["redis/worker-main-sigkill/acks-early"].app.overlay == {"task_acks_late": False}  # type: ignore[union-attr]
    # A fault's own setting reaches the app in Celery's name, over the config's overlay.
    soft = cells["redis/sigquit-soft-shutdown/acks-early"].app
    assert soft is not None and soft.overlay == {"task_acks_late": False, "worker_soft_shutdown_timeout": 2}
    assert soft.key != cells["redis/sigquit/acks-early"].app.key  # type: ignore[union-attr]  # its own Stack


def test_a_repeat_whose_fault_hit_nothing_makes_its_cell_invalid() -> None:
    journal = {
        "ledger": {"sent": 40, "gone": 0, "parked": 0, "queued": 0, "reruns": 0, "duplicated": 0, "unexpected": 0},
        "faults": [{"kind": "kill_pool_child"}],
        "hit": {"count": 0, "in_flight_at_fault": 0},
    }
    assert repeat_figures(journal)["valid"] is False
    assert repeat_figures({**journal, "faults": []})["valid"] is True  # the baseline has nothing to hit
    assert outcome([repeat_figures(journal), figures()]) == "invalid"
    assert outcome([repeat_figures({"ledger": None, "reason": "error: boom"})]) == "invalid"


def test_repeats_that_disagree_are_unstable_and_never_averaged() -> None:
    assert outcome([figures(lost=2), figures(lost=3)]) == "lost"
    assert outcome([figures(lost=2), figures()]) == "unstable"
    assert outcome([figures(twice=1, parked=2)] * 2) == "twice+parked"
    assert outcome([figures(reruns=5)] * 2) == "safe"  # a re-run that completed once is at-least-once working
    assert span([2, 3]) == "2-3" and span([3, 3]) == "3" and span([None]) == "-"
    cell = summarize("redis/x/y", "t", [figures(lost=2), figures()])
    assert [r["lost"] for r in cell["runs"]] == [2, 0]


def test_a_measured_cell_that_contradicts_the_committed_one_is_reported() -> None:
    committed = {
        "a": {"outcome": "lost"},
        "b": {"outcome": "unstable"},
        "c": {"outcome": "safe"},
    }
    measured = {
        "a": {"outcome": "safe"},
        "b": {"outcome": "lost"},
        "c": {"outcome": "unstable"},
        "d": {"outcome": "lost"},
    }
    assert disagreements(measured, committed) == ["a: safe here, lost in the committed doc"]


def _data(cells: dict, command: str = "lab chaos matrix") -> dict:
    versions = {"python": "3.11", "celery": "5", "kombu": "5", "redis-py": "7", "redis": "Redis 7"}
    machine = {"cpus": 2, "memory_gb": 24, "kernel": "6.1", "load_avg": [1.0, 1.0, 1.0]}
    run = {"command": command, "date": "d", "repeat": 1, "versions": versions, "machine": machine, "budget": {}}
    return {
        "runs": [run],
        "cells": {k: {"id": k, "outcome": o, "runs": [figures(lost=o == "lost")]} for k, o in cells.items()},
    }


def test_merge_keeps_cells_it_did_not_measure_and_the_runs_that_did() -> None:
    old = _data({"redis/none/reference": "safe", "rabbitmq/none/reference": "safe"}, "lab chaos matrix (old)")
    new = _data({"redis/none/reference": "lost"}, "lab chaos matrix --brokers redis")
    merged = merge(old, new)
    assert merged["cells"]["redis/none/reference"]["outcome"] == "lost"
    assert merged["runs"][merged["cells"]["redis/none/reference"]["run"]]["command"].endswith("--brokers redis")
    assert merged["runs"][merged["cells"]["rabbitmq/none/reference"]["run"]]["command"].endswith("(old)")
    again = merge(merged, _data({"rabbitmq/none/reference": "safe"}, "new"))
    assert [r["command"] for r in again["runs"]] == ["lab chaos matrix --brokers redis", "new"]


def test_a_recommendation_its_evidence_contradicts_is_flagged() -> None:
    rec = RECOMMENDATIONS[0]
    cells = {ev.cell: "safe" for ev in rec.evidence}
    data = _data(cells)
    assert any(rec.setting in f for f in recommendation_failures(data))
    assert "contradicted by the measurement" in render(data)
    assert Evidence("redis/none/reference", has="lost").holds({}) is None  # not measured: no claim either way


@pytest.mark.usefixtures("no_leftovers")
def test_the_ci_subset_agrees_with_the_committed_doc(tmp_path: Path) -> None:
    out = tmp_path / "matrix.json"
    # One repeat in CI (the committed doc has two per cell, which is where instability shows).
    junit = tmp_path / "matrix.xml"
    args = ["chaos", "matrix", "--tag", "ci", "--repeat", "1", "--against", str(DOC), "--json", str(out)]
    result = CliRunner().invoke(app, [*args, "--junit", str(junit)])
    assert result.exit_code == 0, result.output
    suites = junit_report(junit)
    assert sorted(suites) == sorted(f"matrix {c}" for c in CI_CELLS)
    assert all(case["failure"] is None for cases in suites.values() for case in cases)
    data = json.loads(out.read_text())
    assert sorted(data["cells"]) == sorted(CI_CELLS)
    for cell_id, cell in data["cells"].items():
        assert cell["outcome"] != "invalid", cell
        assert len(cell["runs"]) == 1
        if "/none/" not in cell_id:
            assert all(r["hit"] or r["in_flight_at_fault"] for r in cell["runs"]), cell
        for run in cell["runs"]:
            # An independent witness: the backend's SUCCESS count (on its own server) agrees with the ledger.
            assert run["backend_agrees"] is True, (cell_id, run)
    assert len(data["journals"]) == len(CI_CELLS)
    # The parked cell says when a user gets the messages back: about an hour after the fault.
    parked = data["cells"]["redis/worker-main-sigkill/visibility-default-1h"]["runs"]
    assert all(r["parked"] > 0 and 3500 < r["back_in_s"] <= 3600 for r in parked), parked


def test_a_parked_message_past_its_time_says_why_it_is_not_back() -> None:
    run = figures(parked=2) | {"back_in_s": -10.4, "restore_lock_s": 289.6}
    assert "P2 overdue 10s, sweep lock held 289.6s more" in cell_text({"outcome": "parked", "runs": [run]})
    waiting = figures(parked=2) | {"back_in_s": 3585.2}
    assert "P2 back +3585s" in cell_text({"outcome": "parked", "runs": [waiting]})
