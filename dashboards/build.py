"""Grafana dashboards as code (grafana-foundation-sdk, pinned to its Grafana 11.6 build).

    python -m dashboards.build           # write dashboards/grafana/dashboards/*.json
    python -m dashboards.build --check   # exit 1 if the committed JSON differs from what this code builds

Three dashboards: "Celery overview", "Load test" and "Chaos". Every panel queries the Prometheus datasource
with the fixed uid ``lab-prometheus`` (provisioned from dashboards/grafana/provisioning/), filters by the
``queue``, ``task`` and ``worker`` template variables, and sets its unit and legend. ``lab dashboards
check`` evaluates every target built here against a live Prometheus.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from grafana_foundation_sdk.builders import common as common_b
from grafana_foundation_sdk.builders import dashboard as dash_b
from grafana_foundation_sdk.builders import prometheus as prom_b
from grafana_foundation_sdk.builders import stat as stat_b
from grafana_foundation_sdk.builders import timeseries as ts_b
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_m
from grafana_foundation_sdk.models import dashboard as dash_m

OUT_DIR = Path(__file__).resolve().parent / "grafana" / "dashboards"
DATASOURCE_UID = "lab-prometheus"
DATASOURCE = dash_m.DataSourceRef(type_val="prometheus", uid=DATASOURCE_UID)

# Selectors every task panel shares; "All" is ".*" so the regex matchers keep every series.
TASK_SEL = 'queue_name=~"$queue", name=~"$task", worker=~"$worker"'
# task-sent comes from the publisher (the API, a worker chaining), so it is not filtered by worker.
SENT_SEL = 'queue_name=~"$queue", name=~"$task"'
# `worker` is the node name (w1@host); `hostname` is its host, as celery-exporter has it (docs/metrics.md).
WORKER_SEL = 'worker=~"$worker"'
RI = "$__rate_interval"


@dataclass
class Target:
    expr: str
    legend: str
    # Metric name -> why a healthy run has no series of it. `lab dashboards check` requires every selector of
    # every target to match series during its run; a metric listed here may match none, and the check reports
    # the reason. Not emitted into the Grafana JSON (a Prometheus query has no field for it). Keep it rare.
    empty_ok: dict[str, str] = field(default_factory=dict)


@dataclass
class PanelSpec:
    title: str
    description: str
    unit: str
    targets: list[Target]
    kind: Literal["timeseries", "stat"] = "timeseries"
    width: int = 12
    height: int = 8
    stack: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class DashboardSpec:
    uid: str
    title: str
    description: str
    rows: list[tuple[str, list[PanelSpec]]]
    tags: list[str]
    variables: tuple[str, ...] = ("queue", "task", "worker")
    fault_annotations: bool = False


def _rate(metric: str, sel: str) -> str:
    return f"rate({metric}{{{sel}}}[{RI}])"


def _quantile(q: float, metric: str, sel: str, by: str = "") -> str:
    group = f"le, {by}" if by else "le"
    return f"histogram_quantile({q}, sum by ({group}) ({_rate(metric + '_bucket', sel)}))"


# --- Celery overview ---------------------------------------------------------------------------------------
def overview() -> DashboardSpec:
    throughput = PanelSpec(
        "Task throughput by state",
        "Events per second from the events exporter: published, received, started and finished.",
        "ops",
        [
            Target(f"sum({_rate('celery_task_sent_total', SENT_SEL)}) or vector(0)", "sent"),
            Target(f"sum({_rate('celery_task_started_total', TASK_SEL)}) or vector(0)", "started"),
            Target(f"sum({_rate('celery_task_succeeded_total', TASK_SEL)}) or vector(0)", "succeeded"),
            Target(f"sum({_rate('celery_task_failed_total', TASK_SEL)}) or vector(0)", "failed"),
            Target(f"sum({_rate('celery_task_retried_total', TASK_SEL)}) or vector(0)", "retried"),
        ],
    )
    failure_ratio = PanelSpec(
        "Failure ratio",
        "Failed over finished (failed + succeeded) executions; retries are not finished. Alert above 10%.",
        "percentunit",
        [
            Target(
                f"(sum({_rate('celery_task_failed_total', TASK_SEL)}) or vector(0))"
                f" / (sum({_rate('celery_task_succeeded_total', TASK_SEL)})"
                f" + (sum({_rate('celery_task_failed_total', TASK_SEL)}) or vector(0)))",
                "failure ratio",
            )
        ],
    )
    runtime = PanelSpec(
        "Task runtime p50 / p95 / p99",
        "From task-succeeded events' runtime (celery_task_runtime histogram).",
        "s",
        [Target(_quantile(q, "celery_task_runtime", TASK_SEL), f"p{int(q * 100)}") for q in (0.5, 0.95, 0.99)],
    )
    queue_wait = PanelSpec(
        "Queue wait p95 by queue",
        "Publish (or ETA/countdown, when later) to start of each execution. SLO alert at 10 s.",
        "s",
        [Target(_quantile(0.95, "celery_task_queue_wait_time", TASK_SEL, "queue_name"), "{{queue_name}}")],
    )
    queue_len = PanelSpec(
        "Queue length",
        "Messages waiting in the broker (not yet delivered to a worker).",
        "short",
        [Target('sum by (queue_name) (celery_queue_length{queue_name=~"$queue"})', "{{queue_name}}")],
    )
    workers_up = PanelSpec(
        "Workers up",
        "Workers sending heartbeats. A SIGKILLed worker drops to 0 once its heartbeats expire.",
        "short",
        [Target(f"sum(celery_worker_up{{{WORKER_SEL}}})", "workers up")],
        kind="stat",
        width=6,
    )
    lost_gap = PanelSpec(
        "Lost-task gap",
        "Tasks that started on a process that died and have neither restarted nor finished.",
        "short",
        [Target('sum(celery_task_lost_gap{queue_name=~"$queue"}) or vector(0)', "lost")],
        kind="stat",
        width=6,
    )
    worker_up_ts = PanelSpec(
        "Worker up by host",
        "1 while heartbeats arrive, 0 after they stop.",
        "short",
        [Target(f"celery_worker_up{{{WORKER_SEL}}}", "{{worker}}")],
    )
    active = PanelSpec(
        "Tasks active by worker",
        "Executing tasks, from worker heartbeats.",
        "short",
        [Target(f"sum by (worker) (celery_worker_tasks_active{{{WORKER_SEL}}})", "{{worker}}")],
        stack=True,
    )
    retries = PanelSpec(
        "Retries and redeliveries",
        "Task retries (task-retried) and redeliveries of an attempt a worker already had.",
        "ops",
        [
            Target(f"sum({_rate('celery_task_retried_total', TASK_SEL)}) or vector(0)", "retried"),
            Target(
                f"sum(rate(celery_task_redelivered_total{{{SENT_SEL}}}[{RI}])) or vector(0)",
                "redelivered",
            ),
        ],
    )
    lost = PanelSpec(
        "Executions cut short (worker lost)",
        "WorkerLostError / requeue after a dead pool child, or tasks running on a worker that vanished.",
        "short",
        [
            Target(
                f"sum by (cause) (increase(celery_task_worker_lost_total{{{TASK_SEL}}}[{RI}]))",
                "{{cause}}",
            ),
            Target('sum(celery_task_lost_gap{queue_name=~"$queue"}) or vector(0)', "lost-task gap"),
        ],
    )
    api = PanelSpec(
        "API requests by route and status",
        "From the API's /metrics.",
        "reqps",
        [Target(f'sum by (route, status) (rate(http_requests_total{{job="api"}}[{RI}]))', "{{route}} {{status}}")],
    )
    api_latency = PanelSpec(
        "API latency p95 by route",
        "Request start to end of response body.",
        "s",
        [Target(_quantile(0.95, "http_request_duration_seconds", 'job="api"', "route"), "{{route}}")],
    )
    dispatched = PanelSpec(
        "Tasks dispatched by the API",
        "Publishes from the API process by task name (workflow members included).",
        "ops",
        [Target(f'sum by (name) (rate(api_tasks_dispatched_total{{name=~"$task"}}[{RI}]))', "{{name}}")],
    )
    return DashboardSpec(
        uid="celery-overview",
        title="Celery overview",
        description="Throughput, failures, latency, queues and workers of the lab's Celery system.",
        tags=["celery-lab", "celery"],
        rows=[
            ("Tasks", [throughput, failure_ratio, runtime, queue_wait]),
            ("Queues and workers", [workers_up, lost_gap, queue_len, worker_up_ts, active]),
            ("Retries and losses", [retries, lost]),
            ("API", [api, api_latency, dispatched]),
        ],
    )


# --- Load test ---------------------------------------------------------------------------------------------
def load_test() -> DashboardSpec:
    locust = 'job="locust"'
    return DashboardSpec(
        uid="celery-load-test",
        title="Load test",
        description="Locust's users, request rate, failures and latency beside the system's task throughput.",
        tags=["celery-lab", "load"],
        rows=[
            (
                "Load",
                [
                    PanelSpec(
                        "Users", "Simulated Locust users.", "short", [Target(f"sum(locust_users{{{locust}}})", "users")]
                    ),
                    PanelSpec(
                        "Request rate by endpoint",
                        "Locust requests per second by request name.",
                        "reqps",
                        [Target(f"sum by (name) (rate(locust_requests_total{{{locust}}}[{RI}]))", "{{name}}")],
                    ),
                    PanelSpec(
                        "Failures by endpoint",
                        "Failed Locust requests per second.",
                        "reqps",
                        [
                            Target(
                                f"sum by (name) (rate(locust_failures_total{{{locust}}}[{RI}])) or vector(0)",
                                "{{name}}",
                                empty_ok={
                                    "locust_failures_total": "a healthy load has no failed requests, and the load "
                                    "test's metrics (loadtests/common/metrics.py) create a request's failures "
                                    "series only at its first failure"
                                },
                            )
                        ],
                    ),
                    PanelSpec(
                        "HTTP latency p50 / p95",
                        "Locust's response time for HTTP requests.",
                        "s",
                        [
                            Target(
                                _quantile(q, "locust_response_time_seconds", f'{locust}, type="http"'),
                                f"p{int(q * 100)}",
                            )
                            for q in (0.5, 0.95)
                        ],
                    ),
                ],
            ),
            (
                "System under load",
                [
                    PanelSpec(
                        "Task throughput",
                        "Tasks finishing per second (events exporter).",
                        "ops",
                        [
                            Target(f"sum({_rate('celery_task_succeeded_total', TASK_SEL)}) or vector(0)", "succeeded"),
                            Target(f"sum({_rate('celery_task_failed_total', TASK_SEL)}) or vector(0)", "failed"),
                        ],
                    ),
                    PanelSpec(
                        "Task end-to-end latency p50 / p95",
                        "Request to task finished, measured by Locust (type=task_e2e).",
                        "s",
                        [
                            Target(
                                _quantile(q, "locust_response_time_seconds", f'{locust}, type="task_e2e"'),
                                f"p{int(q * 100)}",
                            )
                            for q in (0.5, 0.95)
                        ],
                    ),
                    PanelSpec(
                        "Queue wait p95 and queue length",
                        "Where the time goes when workers fall behind.",
                        "s",
                        [Target(_quantile(0.95, "celery_task_queue_wait_time", TASK_SEL), "queue wait p95")],
                    ),
                    PanelSpec(
                        "Queue length",
                        "Messages waiting in the broker.",
                        "short",
                        [Target('sum by (queue_name) (celery_queue_length{queue_name=~"$queue"})', "{{queue_name}}")],
                    ),
                ],
            ),
        ],
    )


# --- Chaos -------------------------------------------------------------------------------------------------
def chaos() -> DashboardSpec:
    return DashboardSpec(
        uid="celery-chaos",
        title="Chaos",
        description="Faults injected (annotations), what they cut short, and whether tasks came back.",
        tags=["celery-lab", "chaos"],
        fault_annotations=True,
        rows=[
            (
                "Faults and their effect",
                [
                    PanelSpec(
                        "Faults injected",
                        "lab-fault events announced by chaos experiments, by fault.",
                        "short",
                        [Target("sum by (fault) (increase(celery_lab_faults_total[$__rate_interval]))", "{{fault}}")],
                    ),
                    PanelSpec(
                        "Executions cut short by cause",
                        "pool_child: WorkerLostError or requeue; worker: the whole worker vanished.",
                        "short",
                        [
                            Target(
                                f"sum by (cause) (increase(celery_task_worker_lost_total{{{TASK_SEL}}}[{RI}]))",
                                "{{cause}}",
                            )
                        ],
                    ),
                    PanelSpec(
                        "Redeliveries",
                        "Attempts delivered again after a lost process or a visibility-timeout restore.",
                        "short",
                        [
                            Target(
                                f"sum by (name) (increase(celery_task_redelivered_total{{{SENT_SEL}}}[{RI}]))",
                                "{{name}}",
                            )
                        ],
                    ),
                    PanelSpec(
                        "Lost-task gap",
                        "Started on a dead process, not restarted or finished yet.",
                        "short",
                        [Target('sum by (queue_name) (celery_task_lost_gap{queue_name=~"$queue"})', "{{queue_name}}")],
                    ),
                    PanelSpec(
                        "Workers up",
                        "Heartbeat-based; a SIGKILLed worker goes to 0 after its heartbeats expire.",
                        "short",
                        [Target(f"celery_worker_up{{{WORKER_SEL}}}", "{{worker}}")],
                    ),
                    PanelSpec(
                        "Ledger: unfinished and duplicated tasks",
                        "From the chaos run's loss ledger (exporter --ledger-url): sent tasks not finished (lost, "
                        "once drained) and tasks finished more than once.",
                        "short",
                        [
                            Target("sum by (run) (celery_lab_ledger_unfinished)", "unfinished {{run}}"),
                            Target("sum by (run) (celery_lab_ledger_duplicated)", "duplicated {{run}}"),
                        ],
                    ),
                    PanelSpec(
                        "Task outcomes",
                        "Succeeded and failed by exception while faults run.",
                        "ops",
                        [
                            Target(f"sum({_rate('celery_task_succeeded_total', TASK_SEL)}) or vector(0)", "succeeded"),
                            Target(
                                f"sum by (exception) ({_rate('celery_task_failed_total', TASK_SEL)})",
                                "failed: {{exception}}",
                            ),
                        ],
                    ),
                ],
            )
        ],
    )


DASHBOARDS = {"celery-overview": overview, "load-test": load_test, "chaos": chaos}


# --- building ----------------------------------------------------------------------------------------------
def _variable(name: str) -> dash_b.QueryVariable:
    query = {
        "queue": ("Queue", "label_values(celery_task_sent_total, queue_name)"),
        "task": ("Task", 'label_values(celery_task_sent_total{queue_name=~"$queue"}, name)'),
        "worker": ("Worker", "label_values(celery_worker_up, worker)"),
    }[name]
    return (
        dash_b.QueryVariable(name)
        .label(query[0])
        .query(query[1])
        .datasource(DATASOURCE)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .refresh(dash_m.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dash_m.VariableSort.ALPHABETICAL_ASC)
        .current(dash_m.VariableOption(selected=True, text="All", value="$__all"))
    )


def ref_id(index: int) -> str:
    """A panel's targets are A, B, C, ... in order."""
    return chr(ord("A") + index)


def _panel(spec: PanelSpec, x: int, y: int, panel_id: int) -> Any:
    builder: Any = stat_b.Panel() if spec.kind == "stat" else ts_b.Panel()
    builder = (
        builder.id(panel_id)
        .title(spec.title)
        .description(spec.description)
        .datasource(DATASOURCE)
        .unit(spec.unit)
        .grid_pos(dash_m.GridPos(h=spec.height, w=spec.width, x=x, y=y))
    )
    if spec.kind == "timeseries":
        builder = builder.legend(
            common_b.VizLegendOptions()
            .display_mode(common_m.LegendDisplayMode.TABLE)
            .placement(common_m.LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs(["mean", "max", "lastNotNull"])
        ).fill_opacity(10)
        if spec.stack:
            builder = builder.stacking(common_b.StackingConfig().mode(common_m.StackingMode.NORMAL))
    for i, target in enumerate(spec.targets):
        builder = builder.with_target(
            prom_b.Dataquery().expr(target.expr).legend_format(target.legend).ref_id(ref_id(i)).datasource(DATASOURCE)
        )
    return builder


def build(spec: DashboardSpec) -> dict[str, Any]:
    d = (
        dash_b.Dashboard(spec.title)
        .uid(spec.uid)
        .description(spec.description)
        .tags(spec.tags)
        .editable()
        .refresh("10s")
        .time("now-30m", "now")
        .timezone("browser")
        .tooltip(dash_m.DashboardCursorSync.CROSSHAIR)
    )
    for name in spec.variables:
        d = d.with_variable(_variable(name))
    if spec.fault_annotations:
        d = d.annotation(
            dash_b.AnnotationQuery()
            .name("Faults")
            .datasource(DATASOURCE)
            .enable(True)
            .icon_color("red")
            # A fault's first announcement creates its series, which changes() cannot see: "unless offset".
            .expr(
                "sum by (fault, target) (changes(celery_lab_faults_total[1m]) > 0"
                " or (celery_lab_faults_total unless celery_lab_faults_total offset 1m))"
            )
        )
    y, panel_id = 0, 1
    for row_title, panels in spec.rows:
        d = d.with_row(dash_b.Row(row_title).id(panel_id).grid_pos(dash_m.GridPos(h=1, w=24, x=0, y=y)))
        panel_id += 1
        y += 1
        x, row_h = 0, 0
        for p in panels:
            if x + p.width > 24:
                x, y = 0, y + row_h
                row_h = 0
            d = d.with_panel(_panel(p, x, y, panel_id))
            panel_id += 1
            x += p.width
            row_h = max(row_h, p.height)
        y += row_h
    return json.loads(json.dumps(d.build(), cls=JSONEncoder))


def render(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def all_dashboards() -> dict[str, dict[str, Any]]:
    return {name: build(factory()) for name, factory in DASHBOARDS.items()}


def empty_ok_declarations() -> dict[tuple[str, str, str], dict[str, str]]:
    """(dashboard title, panel title, refId) -> that target's ``empty_ok``, for the targets that declare one."""
    out: dict[tuple[str, str, str], dict[str, str]] = {}
    for factory in DASHBOARDS.values():
        spec = factory()
        for _row, panels in spec.rows:
            for p in panels:
                for i, target in enumerate(p.targets):
                    if target.empty_ok:
                        out[(spec.title, p.title, ref_id(i))] = dict(target.empty_ok)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboards.build", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="Exit 1 if the committed JSON is stale.")
    args = parser.parse_args(argv)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    stale = []
    for name, data in all_dashboards().items():
        path = OUT_DIR / f"{name}.json"
        text = render(data)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.write_text(text)
    if stale:
        print(f"stale dashboard JSON (run `python -m dashboards.build`): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
