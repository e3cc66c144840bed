"""``lab dashboards``: build the Grafana dashboards and check them, and the Prometheus rules, on live data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

dashboards_app = typer.Typer(
    help="Grafana dashboards and Prometheus rules: build them from code, check them against live data.",
    no_args_is_help=True,
)


@dashboards_app.command("check")
def check_cmd(
    config: Annotated[
        str, typer.Option("--config", "-c", help="Config profile: a name under configs/ or a .toml path.")
    ] = "reference",
    tasks: Annotated[int, typer.Option(min=5, max=2000, help="Probe tasks to send (every 5th fails).")] = 30,
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the summary here.")] = None,
) -> None:
    """Start a chaos ledger and a Stack with the events exporter (serving that ledger), Prometheus and Flower;
    drive real traffic (API sign-ups, probe tasks that succeed, fail and wait for a countdown, one SIGKILLed
    pool child), a small chaos run (16 ledger probes, one pool child SIGKILLed) and an 8 s Locust smoke load
    scraped as job "locust"; evaluate every target, variable and annotation of the three dashboards over the
    run, and every rule, through Prometheus' HTTP API; run `promtool check metrics` on every metrics endpoint
    (exporter, API, Flower, and Locust's while the load runs); compare Prometheus' succeeded count with the
    result backend.

    Writes results/dashboards-check-*/dashboards-check.json. Exits 1 on any parse error, empty panel, lint
    failure or disagreement with ground truth."""
    from dashboards.check import run_check, write_summary
    from lab.cli import console, run_dir_for, user_errors

    with user_errors():
        run_dir = run_dir_for("dashboards-check")
        summary = run_check(run_dir, profile=config, tasks=tasks, console=console)
        path = write_summary(summary, run_dir)
        if json_path:
            json_path.write_text(json.dumps(summary, indent=2, default=str))
        console.print(f"summary: {path}")
        if not summary["passed"]:
            for failure in summary["failures"]:
                console.print(f"[red]FAIL[/] {failure['kind']} {failure['where']}: {failure.get('detail', '')}")
            raise typer.Exit(1)
        console.print("[green]dashboards check passed[/]")


@dashboards_app.command("build")
def build_cmd(
    check: Annotated[bool, typer.Option("--check", help="Only report whether the committed JSON is stale.")] = False,
) -> None:
    """Write the Grafana dashboards' JSON (dashboards/grafana/dashboards/) from dashboards/build.py."""
    from dashboards.build import main

    raise typer.Exit(main(["--check"] if check else []))


def report_command(
    run_dir: Annotated[Path, typer.Argument(help="A run directory under results/ whose Stack ran Prometheus.")],
) -> None:
    """Render the "Celery overview" dashboard's panels as PNG (matplotlib, from Prometheus' query_range over the
    run's own stored data) and one HTML page with them and the run's summary: RUN_DIR/report/index.html."""
    from dashboards.report import render_report
    from lab.cli import console, user_errors

    with user_errors():
        page = render_report(run_dir)
        console.print(f"report: {page}")
