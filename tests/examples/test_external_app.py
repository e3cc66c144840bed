"""The lab on an app that is not ours (examples/external_app, a shop written as its team would), through the
same CLI a user runs: chaos with the shop's own task as the probe, a control config that loses, the audit, and
bad input. The A/A bench of two of its configs and the load on its task run in test_ci_templates.py, as steps
of the CI template. The proof that nothing in the harness assumes the reference app."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lab.profiles import ROOT
from tests.support import junit_report

LAB = str(Path(sys.executable).with_name("lab"))
EXAMPLE = ROOT / "examples" / "external_app"
SHOP = "examples.external_app.celery:app"
RUN = ["chaos", "run", "worker-main-sigkill"]
ORDER = {"task": "shop.record_order", "args": ["{id}"], "kwargs": {"amount_cents": 1250}}
ORDER_PROBE = json.dumps(ORDER)
# The same probe with the shop's own count of its table as the second witness (lab/witness.py).
WITNESSED = json.dumps({**ORDER, "witness": ".lab_witness:orders_seen"})


def lab(tmp_path: Path, *args: str, cwd: Path = ROOT, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SHOP_DB": str(tmp_path / "shop.db")}
    return subprocess.run([LAB, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env, check=False)


def orders(tmp_path: Path) -> set[str]:
    """The shop's own record: the orders its table holds (a count independent of the lab's ledger)."""
    with sqlite3.connect(tmp_path / "shop.db") as conn:
        return {row[0] for row in conn.execute("SELECT order_id FROM orders")}


def journal(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


@pytest.mark.stack
def test_a_worker_kill_loses_no_order_of_a_project_found_through_app_path(tmp_path: Path) -> None:
    # The shop copied elsewhere under another package name, found only through --app-path (the lab's process
    # and the workers' PYTHONPATH), and run from another directory.
    project = tmp_path / "project"
    shutil.copytree(EXAMPLE, project / "shopapp", ignore=shutil.ignore_patterns("__pycache__", "lab"))
    out, report = tmp_path / "journal.json", tmp_path / "junit.xml"
    res = lab(
        tmp_path, "chaos", "run", str(EXAMPLE / "lab" / "record-order-worker-kill.json"), "--app", "shopapp.celery:app",
        "--app-path", str(project), "--json", str(out), "--junit", str(report), cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    j = journal(out)
    assert j["app"]["app"] == "shopapp.celery:app" and j["app"]["app_path"] == str(project)
    assert j["app"]["overridden"] == ["broker_url", "result_backend"]  # the shop's localhost:6379 never used
    assert j["config"]["task"] == "shop.record_order" and j["config"]["acks_late"] is True
    assert j["faults"] and j["hit"]["count"] + j["hit"]["in_flight_at_fault"] > 0  # the kill hit work
    ledger = j["ledger"]
    assert ledger["lost"] == 0 and ledger["completed"] == ledger["sent"] == 120
    assert len(orders(tmp_path)) == 120  # every order is in the shop's own table
    # ... and the experiment's witness (relative to the renamed package) counted them there, in the verdict.
    witness = j["witness"]
    assert witness["witness"] == ".lab_witness:orders_seen" and witness["counted"] == 120
    assert witness["missing"] == 0 and witness["agrees"] is True
    assert {"metric": "witness.missing", "value": 0, "met": True}.items() <= next(
        p for p in j["hypothesis"] if p["metric"] == "witness.missing"
    ).items()
    ((case,),) = junit_report(report).values()
    assert case["failure"] is None and case["error"] is None


@pytest.mark.stack
def test_worker_main_sigkill_passes_and_the_acks_early_control_writes_a_failure(tmp_path: Path) -> None:
    runs = {}
    for name, extra in (("stock", []), ("acks-early", ["--config", str(EXAMPLE / "lab" / "acks-early.toml")])):
        out, report = tmp_path / f"{name}.json", tmp_path / f"{name}.xml"
        res = lab(
            tmp_path, "chaos", "run", "worker-main-sigkill", "--app", SHOP, "--probe", WITNESSED,
            "--json", str(out), "--junit", str(report), *extra,
        )  # fmt: skip
        runs[name] = (res, journal(out), junit_report(report))
    res, j, report = runs["stock"]
    assert res.returncode == 0, res.stderr[-3000:]
    assert j["ledger"]["lost"] == 0 and j["config"]["overrides"] == {}  # the reference overrides do not apply
    assert j["witness"]["missing"] == 0 and j["witness"]["agrees"] is True  # the shop's table has every order
    assert j["config"]["overrides_not_applied"]  # and the journal says which
    ((case,),) = report.values()
    assert case["failure"] is None
    res, j, report = runs["acks-early"]
    assert res.returncode == 1, res.stderr[-3000:]
    assert j["config"]["acks_late"] is False and j["config"]["profile"].endswith("acks-early.toml")
    assert j["ledger"]["lost"] > 0 and j["hit"]["caused_gone"] > 0  # lost because of the kill
    ((case,),) = report.values()
    assert case["failure"] and "nothing lost" in case["failure"]
    # The shop's own table misses orders too. A lost order whose insert ran before the kill cut it short is in
    # the table, so the witness can miss fewer than the ledger lost, never more.
    assert 0 < j["witness"]["missing"] <= j["ledger"]["lost"]
    assert j["ledger"]["completed"] == j["ledger"]["sent"] - j["ledger"]["lost"]


@pytest.mark.stack
def test_a_matrix_of_its_own_configs_measures_each_and_fails_against_a_baseline_it_contradicts(
    tmp_path: Path,
) -> None:
    # A baseline from an earlier run (as a CI job would keep) that says the app's own config lost tasks: this
    # run finds it safe, so that cell must fail; the acks-early cell agrees with its baseline and passes.
    baseline = tmp_path / "baseline.json"
    cells = {"redis/worker-main-sigkill/app": "lost", "redis/worker-main-sigkill/acks-early": "lost"}
    baseline.write_text(json.dumps({"cells": {k: {"id": k, "outcome": v, "runs": []} for k, v in cells.items()}}))
    out, report = tmp_path / "matrix.json", tmp_path / "matrix.xml"
    res = lab(
        tmp_path, "chaos", "matrix", "--app", SHOP, "--faults", "worker-main-sigkill", "--repeat", "1",
        "--configs", f"app,{EXAMPLE / 'lab' / 'acks-early.toml'}", "--probe", ORDER_PROBE,
        "--against", str(baseline), "--json", str(out), "--junit", str(report),
    )  # fmt: skip
    assert res.returncode == 1, res.stderr[-3000:]
    data = journal(out)
    assert data["runs"][0]["app"]["configs"] == {"app": {}, "acks-early": {"task_acks_late": False}}
    app_cell, control = (
        data["cells"]["redis/worker-main-sigkill/app"],
        data["cells"]["redis/worker-main-sigkill/acks-early"],
    )
    # Nothing lost; a task whose ack died with the worker may run twice (at-least-once): "safe" or "twice".
    assert app_cell["outcome"] in ("safe", "twice") and app_cell["runs"][0]["lost"] == 0
    assert app_cell["runs"][0]["in_flight_at_fault"] > 0  # the kill hit work
    assert control["outcome"] == "lost" and control["runs"][0]["caused_gone"] > 0  # lost because of the kill
    runs = data["journals"]
    assert runs["redis/worker-main-sigkill/app/r1"]["config"]["task"] == "shop.record_order"
    assert runs["redis/worker-main-sigkill/acks-early/r1"]["config"]["acks_late"] is False
    # The shop's own table: every order of the safe cell, and the control's loss shows there too.
    sent = sum(r["sent"] for c in (app_cell, control) for r in c["runs"])
    assert sent - control["runs"][0]["lost"] <= len(orders(tmp_path)) < sent
    suites = junit_report(report)
    (failed,) = suites["matrix redis/worker-main-sigkill/app"]
    assert failed["failure"] and f"{app_cell['outcome']} here, lost in the committed doc" in failed["failure"]
    (agreed,) = suites["matrix redis/worker-main-sigkill/acks-early"]
    assert agreed["failure"] is None and agreed["error"] is None


def test_the_audit_finds_its_deliberate_hazard(tmp_path: Path) -> None:
    out = tmp_path / "audit.json"
    res = lab(tmp_path, "audit", "--app", SHOP, "--json", str(out))
    assert res.returncode == 0, res.stderr  # a warning only
    found = {f["id"]: f["status"] for f in journal(out)["findings"]}
    assert found["time-limits"] == "warn"  # the hazard settings.py leaves in on purpose
    assert found["acks-late"] == found["reject-on-worker-lost"] == found["visibility-timeout"] == "pass"
    assert found["ignored-settings"] == "pass"  # `import os` in a settings module is not a setting
    assert lab(tmp_path, "audit", "--app", SHOP, "--strict").returncode == 1


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["chaos", "run", "worker-main-sigkill", "--app", "no_such_shop.celery:app"], "does not import"),
        (
            ["chaos", "run", "worker-main-sigkill", "--app", "examples.external_app.tasks:record_order"],
            "not a Celery app",
        ),
        (
            ["chaos", "run", "worker-main-sigkill", "--app", SHOP, "--probe", '{"task": "shop.refund"}'],
            "not registered",
        ),
        (["chaos", "run", "worker-main-sigkill", "--app", SHOP, "--probe", "{task: shop"], "neither a built-in probe"),
        (["chaos", "run", "control-acks-early-pool-child", "--app", SHOP], "a control"),
        (["chaos", "run", "app-email-worker-kill", "--app", SHOP], "reference app's"),
        ([*RUN, "--app", SHOP, "--config", "nope.toml"], "no such file"),
        (["chaos", "matrix", "--app", SHOP, "--tag", "ci"], "reference app's configs"),
        (["chaos", "matrix", "--app", SHOP, "--doc", "m.md"], "published matrix"),
        (["chaos", "matrix", "--app", SHOP, "--configs", "prefetch-4"], "a .toml file"),
        (["chaos", "matrix", "--app", SHOP, "--configs", "nope.toml"], "no such file"),
        (["chaos", "matrix", "--app", SHOP, "--probe", '{"task": "shop.refund"}'], "not registered"),
        (["chaos", "matrix", "--probe", ORDER_PROBE], "--probe needs --app"),
        ([*RUN, "--app", SHOP, "--probe", json.dumps({**ORDER, "witness": ".no_such:f"})], "probe witness: module"),
        ([*RUN, "--app", SHOP, "--probe", json.dumps({**ORDER, "witness": ".tasks:SCHEMA"})], "not a function"),
        ([*RUN, "--app", SHOP, "--probe", json.dumps({**ORDER, "witness": "no colon"})], "does not match"),
        (["bench", "app", "app", "--app", SHOP, "--task", "shop.nope"], "not registered"),
        (["bench", "app", "app", "--app", SHOP, "--workload", "mixed"], "reference app's tasks"),
        (["bench", "app", "app", "--app", SHOP, "--task", "shop.record_order", "--args", "[1,"], "is not JSON"),
        (["up", "--app", "examples.external_app.celery"], "is not MODULE:ATTR"),
        (["load", "smoke", "--app", SHOP, "--task", "shop.record_order"], "HTTP API"),
        (["load", "broker-direct", "--app", SHOP], "--task NAME"),
        (["load", "broker-direct", "--task", "shop.record_order"], "go with --app"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_starts_nothing(tmp_path: Path, args: list[str], needle: str) -> None:
    results = tmp_path / "results"
    res = subprocess.run(
        [LAB, *args], capture_output=True, text=True, timeout=120, cwd=ROOT, check=False,
        env={**os.environ, "LAB_RESULTS_DIR": str(results)},
    )  # fmt: skip
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert needle in res.stderr and "Traceback" not in res.stderr
    assert res.stderr.strip().startswith("error:")
    assert not results.exists() or not any(results.iterdir())  # no run dir: nothing started
