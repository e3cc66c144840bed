"""Prometheus rules and configs: promtool's own checks, and every alert unit-tested both ways."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from dashboards.promconfig import PROM_DIR, RULE_FILES, RULE_TESTS
from lab.procs import require_binary
from lab.prometheus import DEFAULT_RULES_DIR, local_config


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_binary("promtool", "prometheus"), *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_rule_files_pass_promtool_check_rules() -> None:
    assert RULE_FILES, "no rule files found"
    proc = promtool("check", "rules", *map(str, RULE_FILES))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rule_unit_tests_pass() -> None:
    assert RULE_TESTS, "no promtool rule tests found"
    proc = promtool("test", "rules", *map(str, RULE_TESTS))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    alerts = {
        r["alert"]
        for f in RULE_FILES
        for g in yaml.safe_load(f.read_text())["groups"]
        for r in g["rules"]
        if "alert" in r
    }
    fires: set[str] = set()
    silent: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for t in case.get("alert_rule_test", []):
                (fires if t.get("exp_alerts") else silent).add(t["alertname"])
    assert alerts - fires == set(), "alerts never tested firing"
    assert alerts - silent == set(), "alerts never tested silent"
    assert {"CeleryWorkerDown", "CeleryNoWorkerUp", "CeleryWorkerLost", "CeleryLostTaskGap"} <= alerts


def test_a_broken_rule_file_is_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: sum(rate(x[5m]) by\n")
    assert promtool("check", "rules", str(bad)).returncode != 0


@pytest.mark.parametrize("kind", ["local", "compose"])
def test_prometheus_configs_pass_promtool_check_config(tmp_path: Path, kind: str) -> None:
    if kind == "local":
        cfg = local_config(tmp_path / "targets", ("celery", "api"), RULE_FILES)
        path = tmp_path / "prometheus.yml"
        path.write_text(yaml.safe_dump(cfg))
        assert {j["job_name"] for j in cfg["scrape_configs"]} == {"celery", "api"}
        assert cfg["rule_files"] == [str(p) for p in RULE_FILES]
    else:
        # Compose mounts dashboards/prometheus at /etc/prometheus; check it with the rules where it expects them.
        text = (PROM_DIR / "prometheus.yml").read_text().replace("/etc/prometheus/", f"{PROM_DIR}/")
        path = tmp_path / "prometheus.yml"
        path.write_text(text)
    proc = promtool("check", "config", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr


def test_every_stack_prometheus_loads_the_dashboards_rules() -> None:
    # lab/prometheus.py reads the rules by path (the core imports no use): it must be the same set.
    assert sorted(DEFAULT_RULES_DIR.glob("*.yml")) == RULE_FILES
    assert RULE_FILES
