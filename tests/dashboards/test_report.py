"""``lab report``'s pure parts: dashboard definitions to plot specs, counter samples to whole increments and
fault times, unit labels, and the drawing itself (matplotlib, no Prometheus). The report on a real
Prometheus is exercised by tests/orchestration/test_dashboards_traffic.py."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path

from matplotlib import dates as mdates

from dashboards.build import all_dashboards
from dashboards.report import (
    NOUNS,
    FaultMark,
    Line,
    PanelData,
    PanelPlot,
    announced_marks,
    axis_label,
    counter_steps,
    draw_dashboard,
    fault_marks,
    journal_marks,
    legend_text,
    merge_marks,
    nice_step,
    plot_specs,
    split_minor,
    target_plot,
)

BUILT = all_dashboards()
T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC).timestamp()


def specs(uid: str) -> dict[str, PanelPlot]:
    return {p.title: p for p in plot_specs(BUILT[uid])}


def test_every_panel_of_the_three_dashboards_becomes_a_plot_with_its_row_and_unit() -> None:
    for uid, data in BUILT.items():
        drawn = plot_specs(data)
        in_json = [p for p in data["panels"] if p["type"] in {"timeseries", "stat"}]
        assert [p.title for p in drawn] == [p["title"] for p in in_json], uid
        for plot, panel in zip(drawn, in_json, strict=True):
            assert plot.unit == panel["fieldConfig"]["defaults"]["unit"]
            assert [t.expr for t in plot.targets] == [t["expr"] for t in panel["targets"]]
            assert plot.row, f"{uid} / {plot.title} sits in no row"
    overview = specs("celery-overview")
    assert overview["Task throughput by state"].row == "Tasks"
    assert overview["Tasks dispatched by the API"].row == "API"


def test_every_target_has_a_unit_an_engineer_can_read() -> None:
    # "value" is the fallback for a metric NOUNS does not know: a new panel must name what it counts.
    for uid, data in BUILT.items():
        for plot in plot_specs(data):
            for t in plot.targets:
                assert t.noun != "value", f"{uid} / {plot.title}: add its metric to dashboards.report.NOUNS"
                assert t.label(15.0)


def test_counter_targets_are_drawn_from_the_counter_with_their_grouping() -> None:
    throughput = specs("celery-overview")["Task throughput by state"]
    kinds = {t.legend: (t.kind, t.minor, t.by, t.zero) for t in throughput.targets}
    assert kinds["succeeded"] == ("rate", False, (), True)
    assert kinds["failed"] == ("rate", True, (), True)
    assert kinds["retried"] == ("rate", True, (), True)
    assert throughput.targets[2].selector.startswith("celery_task_succeeded_total{")
    assert throughput.targets[2].label(5.0) == "tasks/s"

    cut = specs("chaos")["Executions cut short by cause"].targets[0]
    assert (cut.kind, cut.by, cut.noun, cut.zero) == ("count", ("cause",), "executions", False)
    assert cut.label(15.0) == "executions per 15 s"
    faults = specs("chaos")["Faults injected"].targets[0]
    assert (faults.kind, faults.selector, faults.by) == ("count", "celery_lab_faults_total", ("fault",))

    quantile = specs("celery-overview")["Task runtime p50 / p95 / p99"].targets[0]
    assert (quantile.kind, quantile.noun) == ("value", "seconds")
    ratio = specs("celery-overview")["Failure ratio"].targets[0]
    assert (ratio.kind, ratio.noun) == ("value", "percent")
    gauge = specs("celery-overview")["Queue length"].targets[0]
    assert (gauge.kind, gauge.noun, gauge.label(5.0)) == ("value", "messages", "messages")


def test_a_grouped_rate_with_or_vector_zero_keeps_its_zero_line() -> None:
    t = target_plot(
        'sum by (name) (rate(locust_failures_total{job="locust"}[$__rate_interval])) or vector(0)', "", "reqps"
    )
    assert (t.kind, t.by, t.zero, t.minor, t.noun) == ("rate", ("name",), True, True, "requests")
    assert t.selector == 'locust_failures_total{job="locust"}'


def test_axis_labels_name_the_unit_and_join_different_ones() -> None:
    overview = specs("celery-overview")
    assert axis_label(overview["Task throughput by state"].targets, 15.0) == "tasks/s | retries/s"
    assert axis_label(overview["Executions cut short (worker lost)"].targets, 15.0) == "executions per 15 s | tasks"
    assert axis_label(overview["API latency p95 by route"].targets, 15.0) == "seconds"


def test_nice_step_keeps_the_points_readable() -> None:
    assert nice_step(30) == 1
    assert nice_step(151) == 2
    assert nice_step(1800) == 15
    assert nice_step(3 * 3600) == 120


def test_counter_steps_are_whole_increments_from_the_counter_samples() -> None:
    grid = [T0 + i for i in range(6)]
    series = [
        # Present from the first step: 40 happened before the data starts, so it is a baseline only.
        ({"cause": "pool_child"}, [(grid[0], 40.0), (grid[1], 40.0), (grid[2], 41.0), (grid[3], 43.0)]),
        # Created at step 2 by a burst between two scrapes: its first value counts.
        ({"cause": "worker"}, [(grid[2], 3.0), (grid[3], 3.0), (grid[4], 1.0), (grid[5], math.nan)]),
        # Same group as the first: sums with it.
        ({"cause": "pool_child", "hostname": "w2"}, [(grid[4], 2.0), (grid[5], 2.0)]),
    ]
    got = counter_steps(grid, series, ("cause",))
    assert got[("pool_child",)] == [0, 0, 1, 2, 2, 0]
    # 3 -> 1 is a reset: the counter restarted and counted 1.
    assert got[("worker",)] == [0, 0, 3, 0, 1, 0]
    assert counter_steps(grid, series, ())[()] == [0, 0, 4, 2, 3, 0]


def test_counter_steps_match_prometheus_timestamps_at_millisecond_resolution() -> None:
    grid = [T0 + 0.997 + i * 0.1 for i in range(3)]
    as_echoed = [(float(f"{t:.3f}"), v) for t, v in zip(grid, (0.0, 1.0, 2.0), strict=True)]
    assert counter_steps(grid, [({}, as_echoed)], ())[()] == [0, 1, 1]


def test_fault_marks_are_where_the_fault_counter_rose() -> None:
    series = [
        ({"fault": "kill_worker", "target": "w1"}, [(T0 + 3, 1.0), (T0 + 4, 1.0), (T0 + 9, 3.0)]),
        ({"fault": "restart_broker", "target": "redis"}, [(T0 + 6, 1.0), (T0 + 60, 2.0)]),
    ]
    marks = fault_marks(series, T0, T0 + 30)
    assert [(m.at - T0, m.kind, m.count) for m in marks] == [
        (3, "kill_worker", 1),
        (6, "restart_broker", 1),
        (9, "kill_worker", 2),
    ]
    assert marks[2].short() == "kill_worker w1 x2"
    assert FaultMark(T0, "kill_pool_child", "w1@lab-abc/pool-child").short() == "kill_pool_child w1/pool-child"


def test_announced_fault_times_are_the_values_of_the_time_gauge() -> None:
    series = [
        # Scraped every second: the gauge holds each announcement's own time until the next one.
        ({"fault": "kill_worker", "target": "w1"}, [(T0 + 3, T0 + 2.2), (T0 + 4, T0 + 2.2), (T0 + 9, T0 + 8.6)]),
        ({"fault": "pause_broker", "target": "redis"}, [(T0 + 50, T0 + 49.0)]),  # outside the window
    ]
    marks = announced_marks(series, T0, T0 + 30)
    assert [(round(m.at - T0, 3), m.kind, m.source) for m in marks] == [
        (2.2, "kill_worker", "announcement"),
        (8.6, "kill_worker", "announcement"),
    ]
    # They explain the counter's marks of the same faults, which the exporter's hold and a scrape make late.
    counted = fault_marks([(series[0][0], [(T0 + 3, 0.0), (T0 + 6, 1.0), (T0 + 11, 2.0)])], T0, T0 + 30)
    assert merge_marks(marks, counted, late_s=10) == marks


def test_journal_times_replace_the_counter_marks_they_explain(tmp_path: Path) -> None:
    (tmp_path / "chaos").mkdir()
    journal = {"faults": [{"kind": "kill_worker", "target": "w1", "at": 2.5, "at_epoch": T0 + 2.5}]}
    (tmp_path / "chaos" / "journal.json").write_text(json.dumps(journal))
    (tmp_path / "journal.json").write_text("not json")
    exact = journal_marks(tmp_path)
    assert exact == [FaultMark(T0 + 2.5, "kill_worker", "w1", source="journal")]
    counted = [
        FaultMark(T0 + 3.8, "kill_worker", "w1"),  # the journal's fault, a scrape late
        FaultMark(T0 + 3.8, "kill_pool_child", "w1"),  # another fault, announced outside the experiment
        FaultMark(T0 + 40, "kill_worker", "w1"),  # the same fault again, much later
    ]
    merged = merge_marks(exact, counted, late_s=10)
    assert [(round(m.at - T0, 3), m.kind, m.source) for m in merged] == [
        (2.5, "kill_worker", "journal"),
        (3.8, "kill_pool_child", "counter"),
        (40, "kill_worker", "counter"),
    ]


def _line(legend: str, expr: str, unit: str, ys: list[float]) -> Line:
    target = target_plot(expr, legend, unit)
    return Line(legend, [T0 + i for i in range(len(ys))], ys, target, total=sum(y for y in ys if not math.isnan(y)))


def _epoch(x: datetime | float) -> float:
    return x.timestamp() if isinstance(x, datetime) else mdates.num2date(x).timestamp()


RATE = "sum(rate(celery_task_{}_total[$__rate_interval])) or vector(0)"


def test_failures_get_their_own_axis_only_when_they_would_be_flat_on_the_shared_one() -> None:
    succeeded = _line("succeeded", RATE.format("succeeded"), "ops", [math.nan, 100, 120, 80])
    failed = _line("failed", RATE.format("failed"), "ops", [math.nan, 2, 0, 1])
    main, minor = split_minor([succeeded, failed])
    assert main == [succeeded] and minor == [failed]
    many_failed = _line("failed", RATE.format("failed"), "ops", [math.nan, 90, 0, 1])
    assert split_minor([succeeded, many_failed]) == ([succeeded, many_failed], [])
    assert split_minor([failed]) == ([failed], [])


def test_legends_follow_grafana_legend_format() -> None:
    assert legend_text("{{route}} {{status}}", {"route": "/api", "status": "200"}) == "/api 200"
    assert legend_text("{{worker}}", {"__name__": "celery_worker_up", "hostname": "w1@h"}) == "?"
    assert legend_text("{{name}}", {}) == "(none)"
    assert legend_text("succeeded", {}) == "succeeded"


def test_a_dashboard_draws_on_a_utc_wall_clock_with_fault_markers(tmp_path: Path) -> None:
    overview = specs("celery-overview")
    ys = [math.nan, *range(1, 60)]
    panels = [
        PanelData(
            overview["Task throughput by state"],
            [
                _line("succeeded", RATE.format("succeeded"), "ops", [y * 10 for y in ys]),
                _line("failed", RATE.format("failed"), "ops", [0.0 if math.isnan(y) else y % 2 for y in ys]),
            ],
        ),
        PanelData(overview["Queue length"], []),
    ]
    faults = [FaultMark(T0 + 20, "kill_worker", "w1"), FaultMark(T0 + 41.5, "restart_broker", "redis")]
    fig = draw_dashboard("Celery overview", panels, T0, T0 + 59, 1.0, faults, "run-1")
    path = tmp_path / "overview.png"
    fig.savefig(path)
    assert path.stat().st_size > 20_000

    axes = fig.get_axes()
    assert len(axes) == 3  # throughput split in two (failures on their own scale), queue length
    for ax in axes:
        fmt = ax.xaxis.get_major_formatter()
        assert isinstance(fmt, mdates.DateFormatter)
        assert fmt(mdates.date2num(datetime.fromtimestamp(T0 + 20, UTC))) == "12:00:20"
        markers = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
        assert sorted(_epoch(ln.get_xdata()[0]) for ln in markers) == [T0 + 20, T0 + 41.5]
        assert ax.get_ylabel()
    throughput, failures, queue = axes
    assert throughput.get_ylabel() == "tasks/s" and failures.get_ylabel() == "tasks/s"
    assert failures.get_xlabel() == "time (UTC)" and queue.get_xlabel() == "time (UTC)"
    assert [t.get_text() for t in failures.get_legend().get_texts()] == ["failed: 30 in all"]
    header = " ".join(t.get_text() for sub in fig.subfigs for t in sub.texts)
    assert "F2  12:00:41 UTC  restart_broker redis" in header
    assert "no data" in [t.get_text() for t in queue.texts] and queue.get_ylabel() == "messages"


def test_nouns_cover_only_metrics_the_dashboards_read() -> None:
    # NOUNS stays the dashboards' vocabulary: a renamed metric must not leave a stale entry behind.
    read = " ".join(t["expr"] for d in BUILT.values() for p in d["panels"] for t in p.get("targets", []))
    assert all(name in read for name in NOUNS), [n for n in NOUNS if n not in read]
