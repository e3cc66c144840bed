"""``lab dashboards check`` end to end: real Stack, real Prometheus, real traffic, ground truth.

The check drives a Locust load and a small chaos run itself, so every panel of the three dashboards must have
data. Two deliberately bad expressions ride along, so the test also proves the check fails when it should: they
must be the only failures. The same run then feeds the demo's metrics section and ``lab report``.
"""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from dashboards.check import Item, demo_section
from dashboards.report import render_report
from orchestration.dashboards_traffic import run_check

pytestmark = pytest.mark.stack


def test_every_query_has_data_and_prometheus_agrees_with_the_backend(tmp_path, no_leftovers) -> None:
    canaries = [
        Item("panel", "canary / parse error", "sum(rate(celery_task_succeeded_total[5m]) by"),
        Item("panel", "canary / no such metric", "sum(rate(celery_task_never_emitted_total[$__rate_interval]))"),
    ]
    with (tmp_path / "console.txt").open("w") as out:
        summary = run_check(
            tmp_path / "check",
            tasks=20,
            extra_items=canaries,
            on_stack=lambda stack: demo_section(stack, Console(file=out)),
        )

    failed = {f["where"]: f.get("status", f["kind"]) for f in summary["failures"]}
    assert failed == {"canary / parse error": "error", "canary / no such metric": "empty"}, summary["failures"]
    by_kind: dict[str, set[str]] = {}
    for item in summary["items"]:
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
    demo = summary["on_stack"]
    assert demo["passed"], demo["without_data"]
    assert demo["panels_with_data"] == demo["panels_checked"] > 10
    assert demo["succeeded"]["agrees"]

    # `lab report`: the overview drawn from the run's stored Prometheus data, after the Stack stopped.
    page = render_report(tmp_path / "check")
    assert page.is_file() and "<img" in page.read_text()
    drawn = {p["title"]: p for p in json.loads((page.parent / "panels.json").read_text())}
    assert drawn["Task throughput by state"]["series"] >= 4
    assert (page.parent / drawn["Task throughput by state"]["png"]).stat().st_size > 10_000
