"""``lab load SCENARIO``: the typer command. Everything is checked before anything starts."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from lab.apps import AppTarget
from lab.ci_results import publish
from lab.cli_options import AppOpt, AppPathOpt, ArgsOpt, TaskOpt
from lab.console import check_outputs, console, user_errors
from lab.errors import StackError
from lab.junit import Case, Suite
from lab.probes import parse_call
from lab.profiles import load_profile
from lab.rundirs import run_dir_for
from lab.stack import Stack
from loadtests.common.config import (
    SCENARIOS_FILE,
    ScenarioError,
    broker_from_env,
    get_scenario,
    load_scenarios,
    parse_duration,
    parse_threshold,
)
from loadtests.runner import Distribution, check_host, run_scenario, stack_config


def _scenario_names() -> str:
    try:
        return ", ".join(load_scenarios())
    except ScenarioError:
        return f"see {SCENARIOS_FILE}"


def load(
    scenario: Annotated[
        str, typer.Argument(help=f"Scenario name from loadtests/scenarios.toml ({_scenario_names()}).")
    ],
    duration: Annotated[
        str | None, typer.Option("--duration", "-d", help="Run for this long instead (90, 30s, 5m, 1h30m).")
    ] = None,
    users: Annotated[
        int | None, typer.Option("--users", "-u", min=1, max=100000, help="Peak users instead of the scenario's.")
    ] = None,
    config: Annotated[
        str | None,
        typer.Option(
            "--config", "-c", help="Config profile of the local stack instead of the scenario's (configs/<name>.toml)."
        ),
    ] = None,
    host: Annotated[
        str | None,
        typer.Option(help="Load this existing deployment (its API base URL) instead of starting a local stack."),
    ] = None,
    processes: Annotated[
        int, typer.Option("--processes", "-p", min=0, max=64, help="Locust master + N worker processes (0: one).")
    ] = 0,
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write summary.json here.")] = None,
    threshold: Annotated[
        list[str] | None,
        typer.Option(
            "--threshold",
            "-t",
            help="Override an SLO threshold, NAME=VALUE (max_failure_ratio, p95_http_ms, p95_task_ms, min_rps, "
            "max_task_failure_ratio, max_unfinished_tasks); repeatable.",
        ),
    ] = None,
    remote_workers: Annotated[
        int,
        typer.Option(min=0, max=256, help="Also wait for this many Locust workers from other machines."),
    ] = 0,
    master_bind: Annotated[
        str, typer.Option(help="Address the Locust master listens on (0.0.0.0 for remote workers).")
    ] = "127.0.0.1",
    prometheus_port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="Serve the run's Locust metrics on this port (default: a free one)."),
    ] = None,
    prometheus: Annotated[
        bool,
        typer.Option(
            "--prometheus",
            help="Also start the events exporter and Prometheus (Debian package) in the local stack; Prometheus "
            'scrapes the Locust metrics as job "locust", so the "Load test" dashboard works during the run '
            "(URL printed; data kept in RUN_DIR/stack/prometheus for `lab report`). Not with --host.",
        ),
    ] = False,
    junit: Annotated[
        Path | None, typer.Option(help="Write a JUnit XML report: one testcase per SLO threshold.")
    ] = None,
    app: AppOpt = None,
    app_path: AppPathOpt = None,
    task: TaskOpt = None,
    args: ArgsOpt = None,
) -> None:
    """Run a named load scenario with Locust (headless) and check its SLO thresholds.

    Starts a local stack for the run unless --host names an existing deployment; --prometheus adds
    Prometheus to it, scraping the stack and the run's Locust metrics.
    With --app (your Celery app) broker-direct sends your --task with --args (a template, "{id}" a fresh id
    per message) to workers of your app, and --config is a TOML file of Celery settings laid over it.
    Writes Locust's CSV, HTML and JSON, and summary.json, to results/load-SCENARIO-TIMESTAMP/ (docs/load.md).
    Exit 0 when every threshold holds; 1 when one fails (named, with by how much); 2 for bad input."""
    with user_errors():
        check_outputs(json_path=json_path, junit=junit)
        target = AppTarget.from_options(app, app_path, config)
        sc = get_scenario(scenario).with_overrides(
            users=users,
            duration_s=parse_duration(duration) if duration is not None else None,
            profile=None if not target.reference else config,
            thresholds=dict(parse_threshold(t) for t in threshold or []),
        )
        if not target.reference:
            if host:
                raise StackError("--host loads an existing deployment of the reference API; drop it with --app")
            if not task:
                raise StackError(f"with --app, name the task to send: --task NAME (one of {', '.join(target.tasks())})")
            target.require_task(task)
            sc = sc.for_app(target.spec, task, *parse_call(args))
        elif task or args:
            raise StackError("--task and --args name a task of your app: they go with --app")
        dist = Distribution(
            processes=processes,
            remote_workers=remote_workers,
            master_bind=master_bind,
            prometheus_port=prometheus_port,
        )
        if host and prometheus:
            raise StackError(
                "--prometheus starts Prometheus in the local stack, and --host starts none: point your own "
                "Prometheus at the run's Locust metrics instead (--prometheus-port fixes their port)"
            )
        if host:
            if config:
                load_profile(config)  # still reject a profile that does not exist
                console.print(f"[yellow]note:[/] --config {config} is only recorded: --host is not started by the lab")
            check_host(host)
            if sc.uses_broker and not broker_from_env(os.environ):
                raise StackError(
                    f"scenario {sc.name} publishes straight to the broker: with --host also set CELERY_BROKER_URL, "
                    "CELERY_RESULT_BACKEND and CACHE_URL to that deployment's"
                )
            run_dir = run_dir_for(f"load-{scenario}")
            summary = run_scenario(sc, run_dir=run_dir, console=console, host=host, dist=dist, config=config)
        else:
            run_dir = run_dir_for(f"load-{scenario}")
            # Validates the profile before starting anything.
            stack = Stack(stack_config(sc, run_dir / "stack", prometheus=prometheus, app=target))
            extra = " with the events exporter and Prometheus" if prometheus else ""
            what = f"profile {sc.profile}" if target.reference else f"{target.spec}, {target.overlay_source or 'as is'}"
            console.print(f"starting a local stack ({what}, {sc.workers} worker(s)){extra} ...", highlight=False)
            with stack:
                if prometheus:
                    console.print(f"Prometheus: {stack.urls['prometheus']}", highlight=False)
                summary = run_scenario(sc, run_dir=run_dir, console=console, stack=stack, dist=dist)
        if json_path:
            json_path.write_text(json.dumps(summary, indent=2))
        publish(junit, f"lab load {scenario}", [junit_suite(summary, run_dir)])
        if not summary["passed"]:
            failed = [v["message"] for v in summary["thresholds"] if not v["ok"]]
            console.print("[red]thresholds failed:[/] " + "; ".join(failed), highlight=False, soft_wrap=True)
            raise typer.Exit(1)


def junit_suite(summary: dict, run_dir: Path) -> Suite:
    """A testcase per threshold; a broken one is a failure whose message is the verdict's (value vs limit)."""
    cases = [
        Case(v["name"], f"load.{summary['scenario']}", failure=None if v["ok"] else v["message"], output=v["message"])
        for v in summary["thresholds"]
    ]
    return Suite(
        f"load {summary['scenario']}", cases, {"summary": run_dir / "summary.json", "config": summary["config"]}
    )
