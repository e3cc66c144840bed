"""``lab dashboards check`` end to end: real Stack, real Prometheus, real traffic, ground truth.

The check drives a Locust load and a small chaos run itself, so every panel of the three dashboards must have
data. Deliberately bad expressions ride along, so the test also proves the check fails when it should: they
must be the only failures. The same run then feeds the demo's metrics section and ``lab report``. One Stack
for the whole module (a check run is most of a minute): the tests below read the same run.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from PIL import Image
from rich.console import Console

from dashboards.build import TASK_SEL
from dashboards.check import Item, demo_section, substitute
from dashboards.report import render_report
from lab.prometheus import PromClient
from lab.stack import Stack
from orchestration.dashboards_traffic import run_check

pytestmark = pytest.mark.stack

MISSPELLED = "celery_task_faild_total"  # celery_task_failed_total, one letter short
OR_ZERO = "sum(rate({metric}{{" + TASK_SEL + "}}[$__rate_interval])) or vector(0)"
DECLARED_REASON = "a canary: declared empty to show the check accepts and reports a declaration"
CANARIES = [
    Item("panel", "canary / parse error", "sum(rate(celery_task_succeeded_total[5m]) by"),
    Item("panel", "canary / no such metric", "sum(rate(celery_task_never_emitted_total[$__rate_interval]))"),
    # The issue: `or vector(0)` answers 0 whatever the left side names, so only the selectors show a typo.
    Item("panel", "canary / misspelled or vector(0)", OR_ZERO.format(metric=MISSPELLED)),
    Item("panel", "canary / spelled right or vector(0)", OR_ZERO.format(metric="celery_task_failed_total")),
    Item(
        "panel",
        "canary / declared empty or vector(0)",
        OR_ZERO.format(metric="celery_task_never_emitted_total"),
        empty_ok={"celery_task_never_emitted_total": DECLARED_REASON},
    ),
    # An alert is healthy when its answer is empty, so a misspelled input is visible only through its selectors.
    Item("alert", "canary / alert on a misspelled metric", "celery_worker_upp == 0"),
]
FAILING = {
    "canary / parse error": "error",
    "canary / no such metric": "empty",
    "canary / misspelled or vector(0)": "empty",
    "canary / alert on a misspelled metric": "empty",
}


def _children() -> set[int]:
    return {p.pid for p in psutil.Process(os.getpid()).children(recursive=True)}


def _on_stack(stack: Stack, out: Any) -> dict[str, Any]:
    """The demo's metrics section, and what Prometheus itself answers for the misspelled canary (over the
    run so far): data, which is why the answer alone cannot catch it."""
    prom = PromClient(stack.urls["prometheus"])
    try:
        start = min(p.started_at for p in stack.procs.values())
        answer = prom.query_range(substitute(OR_ZERO.format(metric=MISSPELLED)), start, time.time())
    finally:
        prom.close()
    return {"demo": demo_section(stack, Console(file=out)), "misspelled_answer": answer}


@pytest.fixture(scope="module")
def check_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    run_dir = tmp_path_factory.mktemp("dashboards-check")
    before = _children()
    with (run_dir / "console.txt").open("w") as out:
        summary = run_check(
            run_dir / "check",
            tasks=20,
            extra_items=[Item(i.kind, i.where, i.expr, empty_ok=dict(i.empty_ok)) for i in CANARIES],
            on_stack=lambda stack: _on_stack(stack, out),
        )
    # What the conftest's no_leftovers does per test, here for the module's one Stack.
    left = []
    for pid in _children() - before:
        try:
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{pid} {' '.join(proc.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            continue
    assert not left, f"processes left behind: {left}"
    return summary, run_dir


def test_every_query_has_data_and_prometheus_agrees_with_the_backend(check_run) -> None:
    summary, _run_dir = check_run
    failed = {f["where"]: f.get("status", f["kind"]) for f in summary["failures"]}
    assert failed == FAILING, summary["failures"]
    by_kind: dict[str, set[str]] = {}
    for item in summary["items"]:
        if not item["where"].startswith("canary /"):
            by_kind.setdefault(item["kind"], set()).add(item["status"])
    assert by_kind["variable"] == {"ok"} and by_kind["record"] == {"ok"}
    assert by_kind["alert"] == {"ok"} and by_kind["annotation"] == {"ok"}
    # Every panel of the three dashboards has data: the check drove a Locust load and a chaos run of its own.
    status = {i["where"]: i["status"] for i in summary["items"] if i["kind"] == "panel"}
    real = {w: st for w, st in status.items() if not w.startswith("canary /")}
    assert set(real.values()) == {"ok"}, {w: st for w, st in real.items() if st != "ok"}
    for dashboard in ("Celery overview /", "Load test /", "Chaos /"):
        assert any(w.startswith(dashboard) for w in real), dashboard
    assert any(w.startswith("Load test / Users") for w in real)
    assert any(w.startswith("Chaos / Ledger: unfinished and duplicated tasks") for w in real)

    load = summary["load"]
    assert load["scraped"] and load["panels_with_data"] and load["requests"] > 0, load
    assert "locust" in summary["scraped_jobs"]
    chaos = summary["chaos"]
    assert chaos["ledger"]["sent"] == 16 and chaos["faults"][0]["kind"] == "kill_pool_child", chaos

    truth = summary["ground_truth"]
    assert truth["agrees"] and truth["backend_success"] > 0
    assert truth["prometheus_increase"] == truth["backend_success"]
    assert summary["traffic"]["killed"], "the check did not kill a pool child"
    assert "CeleryWorkerLost" in summary["alerts_firing"]
    assert summary["promtool_check_metrics"] == {"exporter": True, "api": True, "flower": True, "locust": True}

    # What the demo gets: every overview query with data, and the same agreement with the backend.
    demo = summary["on_stack"]["demo"]
    assert demo["passed"], demo["without_data"]
    assert demo["panels_with_data"] == demo["panels_checked"] > 10
    assert demo["succeeded"]["agrees"]


def test_a_misspelled_metric_behind_or_vector_0_fails_naming_it(check_run) -> None:
    summary, _run_dir = check_run
    # Prometheus answers the misspelled canary with data (the vector(0)): its answer alone cannot catch it.
    answer = summary["on_stack"]["misspelled_answer"]
    assert answer and {float(s["value"][1]) for s in answer} == {0.0}, answer
    items = {i["where"]: i for i in summary["items"]}
    bad = items["canary / misspelled or vector(0)"]
    assert bad["status"] == "empty" and f"selector {MISSPELLED}" in bad["detail"], bad
    assert "matched no series during the run" in bad["detail"], bad
    assert items["canary / spelled right or vector(0)"]["status"] == "ok", items["canary / spelled right or vector(0)"]
    declared = items["canary / declared empty or vector(0)"]
    assert declared["status"] == "ok" and DECLARED_REASON in declared["detail"], declared
    alert = items["canary / alert on a misspelled metric"]
    assert alert["status"] == "empty" and "celery_worker_upp" in alert["detail"], alert


def test_lab_report_draws_the_three_dashboards_on_a_wall_clock_with_fault_markers(check_run) -> None:
    """`lab report`: the three dashboards drawn from the run's stored Prometheus data, after the Stack stopped."""
    summary, run_dir = check_run
    truth = summary["ground_truth"]
    page = render_report(run_dir / "check")
    text = page.read_text()
    report = json.loads((page.parent / "report.json").read_text())
    drawn = {d["uid"]: d for d in report["dashboards"]}
    assert set(drawn) == {"celery-overview", "load-test", "chaos"}
    for uid, d in drawn.items():
        png = page.parent / d["png"]
        with Image.open(png) as im:
            width, height = im.size
            colours = len(im.convert("RGB").getcolors(maxcolors=1 << 16) or range(1 << 16))
        # A dashboard of panels with lines, not an empty canvas: big, and far from a handful of colours.
        assert png.stat().st_size > 80_000 and width == 1600 and height > 1000 and colours > 500, (uid, png)
        assert f"<img src='{d['png']}'" in text
        assert all(p["with_data"] for p in d["panels"]), [p["title"] for p in d["panels"] if not p["with_data"]]
    panels = {p["title"]: p for p in drawn["celery-overview"]["panels"]}
    assert panels["Task throughput by state"]["series"] == 5
    assert panels["Task throughput by state"]["ylabel"] == "tasks/s | retries/s"
    # Drawn from the counter's own samples, the run's total is a whole number of tasks, and the backend's.
    assert panels["Task throughput by state"]["totals"]["succeeded"] == truth["backend_success"]
    # Both announced faults are marked at their announcements' own times (celery_lab_fault_time_seconds),
    # inside the run: the pool child the traffic killed and the chaos run's.
    faults = report["faults"]
    assert [f["kind"] for f in faults] == ["kill_pool_child", "kill_pool_child"], faults
    assert {f["source"] for f in faults} == {"announcement"}, faults
    assert all(report["start"] <= f["at"] <= report["end"] for f in faults)
    assert text.count("kill_pool_child") >= 2
