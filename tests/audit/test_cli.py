"""``lab audit`` as users run it: the real binary, exit codes, one-line errors, --json keys, and a real
redis-server asked about persistence."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lab.procs import start_redis_server
from lab.profiles import ROOT
from tests.support import junit_report

LAB = str(Path(sys.executable).with_name("lab"))


def run_audit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LAB, "audit", *args], capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)


def test_the_reference_app_exits_0_and_writes_the_json(tmp_path: Path) -> None:
    out = tmp_path / "audit.json"
    res = run_audit("app.core.celery:celery_app", "--json", str(out))
    assert res.returncode == 0, res.stderr
    doc = json.loads(out.read_text())
    assert set(doc) == {"app", "findings", "summary", "passed"}
    assert doc["passed"] is True and doc["summary"]["fail"] == 0
    assert set(doc["findings"][0]) == {"id", "status", "found", "fix", "evidence", "experiment"}


def test_a_hazard_exits_1_and_strict_fails_on_a_warning(tmp_path: Path) -> None:
    junit = tmp_path / "audit.xml"
    assert run_audit("tests.audit.apps.bad:no_reject", "--junit", str(junit)).returncode == 1
    cases = {c["name"]: c for c in junit_report(junit)["audit tests.audit.apps.bad:no_reject"]}
    assert cases["reject-on-worker-lost"]["failure"].startswith("fail: ")  # the hazard, with its fix and cell
    assert "evidence: redis/pool-child-sigkill/acks-late-no-reject" in cases["reject-on-worker-lost"]["failure"]
    assert [n for n, c in cases.items() if c["failure"]] == ["reject-on-worker-lost"]  # and nothing else
    assert run_audit("tests.audit.apps.bad:prefetch").returncode == 0  # a warning only
    assert run_audit("tests.audit.apps.bad:prefetch", "--strict").returncode == 1


@pytest.mark.parametrize("spec", ["no.such.module:app", "tests.audit.apps.bad:GOOD", "app.core.celery"])
def test_bad_input_is_one_line_and_exit_2(spec: str) -> None:
    res = run_audit(spec)
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1 and res.stderr.startswith("error: ")


@pytest.mark.stack
@pytest.mark.parametrize(("aof", "status"), [(False, "fail"), (True, "pass")])
def test_broker_persistence_is_read_from_the_broker(tmp_path: Path, aof: bool, status: str) -> None:
    proc, port = start_redis_server("redis", tmp_path / "redis", tmp_path / "redis.log", aof=aof)
    try:
        out = tmp_path / "audit.json"
        res = run_audit("tests.audit.apps.bad:good", "--broker-url", f"redis://127.0.0.1:{port}/0", "--json", str(out))
        finding = next(f for f in json.loads(out.read_text())["findings"] if f["id"] == "broker-persistence")
        assert finding["status"] == status, finding
        assert res.returncode == (1 if status == "fail" else 0)
    finally:
        proc.stop(timeout=5)


def test_an_unreachable_broker_is_exit_2() -> None:
    res = run_audit("tests.audit.apps.bad:good", "--broker-url", "redis://127.0.0.1:1/0")
    assert res.returncode == 2
    assert "cannot read its persistence settings" in res.stderr
