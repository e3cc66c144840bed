"""The verbs that combine uses: ``lab demo`` and ``lab dashboards check`` (whose traffic is chaos plus load)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from dashboards.check import write_summary
from lab.console import console, user_errors, write_json
from lab.rundirs import run_dir_for
from orchestration.dashboards_traffic import run_check
from orchestration.demo import run_demo

ConfigOpt = Annotated[
    str,
    typer.Option("--config", "-c", help="Config profile: a name under configs/ (e.g. reference) or a .toml path."),
]


def demo(
    config: ConfigOpt = "reference",
    users: Annotated[int, typer.Option(min=1, max=200, help="Users to sign up in the burst.")] = 8,
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the summary here.")] = None,
) -> None:
    """The main job: start the stack, push a burst of every task type through the API (with real SMTP
    refusals and AI failures to retry through), show live progress and a summary (final states, latency per
    task type, emails, exports); then a short load scenario, a check of every dashboard panel and of the
    metrics against the result backend, a PNG report, and one worker-kill chaos experiment.

    Exits 0 only if every task reached its expected final state and every section passed."""
    with user_errors():
        run_dir = run_dir_for("demo")
        summary = run_demo(run_dir=run_dir, profile=config, users=users, console=console)
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        write_json(json_path, summary)
        console.print(f"summary: {run_dir / 'summary.json'}")
        if not summary["passed"]:
            raise typer.Exit(1)


def dashboards_check(
    config: ConfigOpt = "reference",
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
    with user_errors():
        run_dir = run_dir_for("dashboards-check")
        summary = run_check(run_dir, profile=config, tasks=tasks, console=console)
        path = write_summary(summary, run_dir)
        write_json(json_path, summary)
        console.print(f"summary: {path}")
        if not summary["passed"]:
            for failure in summary["failures"]:
                console.print(f"[red]FAIL[/] {failure['kind']} {failure['where']}: {failure.get('detail', '')}")
            raise typer.Exit(1)
        console.print("[green]dashboards check passed[/]")
