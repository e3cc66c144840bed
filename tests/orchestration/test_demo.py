"""`lab demo` as a user runs it: every section passes, and nothing it started is left running."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lab.procs import PID_RECORD, recorded_alive
from lab.profiles import ROOT

LAB = str(Path(sys.executable).with_name("lab"))
pytestmark = pytest.mark.stack


def test_demo_passes_and_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "summary.json"
    results = tmp_path / "results"
    proc = subprocess.Popen(
        [LAB, "demo", "--users", "4", "--json", str(out)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "LAB_RESULTS_DIR": str(results)},
    )
    _, err = proc.communicate(timeout=280)
    assert proc.returncode == 0, err[-3000:]
    summary = json.loads(out.read_text())
    assert summary["passed"] is True
    assert set(summary["tasks"]["by_state"]) == {"SUCCESS"}
    assert summary["retries"] >= 4  # two refused emails and two failed AI calls, retried
    assert summary["emails"]["refused"] == 2
    assert summary["exports"]["written"] == summary["exports"]["requested"] > 0
    assert summary["workflows"]["chord"] == {"count": 20, "total": sum(i * i for i in range(1, 21))}
    assert "send_welcome_email" in summary["latency"]
    assert summary["load"]["passed"] is True
    assert summary["metrics"]["passed"] is True
    assert summary["metrics"]["succeeded"]["agrees"] is True
    assert summary["chaos"]["verdict"] == "pass"
    assert (
        summary["chaos"]["ledger"]["sent"]
        == summary["chaos"]["ledger"]["completed"] + summary["chaos"]["ledger"]["lost"]
    )
    assert Path(summary["report"]).is_file()
    assert "demo: PASS" in err
    # Every process the demo started (each Stack's members, the chaos ledger, Locust, the report's Prometheus)
    # was recorded by PID and start time beside its logs; none may still run.
    recorded = [line for f in results.rglob(PID_RECORD) for line in f.read_text().splitlines()]
    assert len(recorded) >= 10, recorded
    assert not recorded_alive(results)
