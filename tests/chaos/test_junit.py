"""Chaos verdicts as JUnit: a failing verdict is a <failure> saying what was measured against what was
expected, a run that never ran is an <error>, an n/a matrix cell is <skipped>; every report is schema-valid."""

from __future__ import annotations

from pathlib import Path

from chaos.junit import experiment_suite, matrix_suites
from lab.junit import write_junit
from tests.support import junit_report

LEDGER = {"sent": 60, "completed": 57, "lost": 3, "gone": 3, "parked": 0, "duplicated": 0, "unexpected": 0}


def journal(**extra: object) -> dict:
    base = {
        "experiment": "worker-main-sigkill",
        "broker": "redis",
        "ledger": LEDGER,
        "hit": {"count": 4, "in_flight_at_fault": 4},
        "expected": "no-loss",
        "verdict": "fail",
        "reason": "steady state violated: nothing lost",
        "hypothesis": [
            {"name": "nothing lost", "value": 3, "tolerance": 0, "met": False},
            {"name": "nothing unexpected", "value": 0, "tolerance": 0, "met": True},
        ],
        "run_dir": "results/chaos-worker-main-sigkill-1",
        "wall_s": 12.5,
    }
    return {**base, **extra}


def test_verdicts_become_failures_errors_and_passes(tmp_path: Path) -> None:
    out = tmp_path / "chaos.xml"
    passing = journal(experiment="ok", verdict="pass", reason="steady state held", hypothesis=[])
    errored = {"experiment": "broken", "ledger": None, "expected": "no-loss", "verdict": "fail", "reason": "error: x"}
    write_junit(out, "lab chaos suite", [experiment_suite(j) for j in (journal(), passing, errored)])
    suites = junit_report(out)
    (failed,) = suites["chaos worker-main-sigkill"]
    assert failed["failure"] == "steady state violated: nothing lost (nothing lost: measured 3, expected 0)"
    assert failed["properties"]["journal"] == "results/chaos-worker-main-sigkill-1/journal.json"
    assert suites["chaos ok"][0]["failure"] is None
    assert suites["chaos broken"][0]["error"] == "error: x"


def test_a_control_that_caught_nothing_says_what_it_measured(tmp_path: Path) -> None:
    out = tmp_path / "c.xml"
    control = journal(expected="loss", reason="control: expected loss, the ledger found none")
    write_junit(out, "x", [experiment_suite(control)])
    (case,) = junit_report(out)["chaos worker-main-sigkill"]
    assert case["failure"].startswith("control: expected loss, the ledger found none (expected loss; measured sent 60")


def test_matrix_cells_pass_fail_and_skip(tmp_path: Path) -> None:
    run = {"valid": True, "lost": 0, "wall_s": 3.0}
    result = {
        "cells": {
            "redis/none/reference": {"outcome": "safe", "runs": [run]},
            "redis/sigterm/reference": {"outcome": "twice", "runs": [{**run, "twice": 2}]},
            "rabbitmq/network-partition/reference": {"outcome": "n/a", "why": "Redis only", "runs": []},
        }
    }
    problems = ["redis/sigterm/reference: twice here, safe in the committed doc"]
    out = tmp_path / "m.xml"
    write_junit(out, "lab chaos matrix", matrix_suites(result, tmp_path, problems))
    suites = junit_report(out)
    assert suites["matrix redis/none/reference"][0]["failure"] is None
    assert suites["matrix redis/sigterm/reference"][0]["failure"] == problems[0]
    assert suites["matrix rabbitmq/network-partition/reference"][0]["skipped"] == "Redis only"
