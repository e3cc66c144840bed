"""``lab dashboards build`` and ``lab report``; ``lab dashboards check`` drives traffic through every use, so
it is composed in orchestration/cli.py and registered on this group by lab/cli.py."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dashboards.build import main as build_main
from dashboards.report import render_report
from lab.console import console, user_errors

dashboards_app = typer.Typer(
    help="Grafana dashboards and Prometheus rules: build them from code, check them against live data.",
    no_args_is_help=True,
)


@dashboards_app.command("build")
def build_cmd(
    check: Annotated[bool, typer.Option("--check", help="Only report whether the committed JSON is stale.")] = False,
) -> None:
    """Write the Grafana dashboards' JSON (dashboards/grafana/dashboards/) from dashboards/build.py."""
    raise typer.Exit(build_main(["--check"] if check else []))


def report_command(
    run_dir: Annotated[Path, typer.Argument(help="A run directory under results/ whose Stack ran Prometheus.")],
) -> None:
    """Draw the three dashboards as PNG, one per dashboard, on a UTC clock with the run's faults marked
    (matplotlib, from Prometheus over the run's own stored data), and one HTML page with them, the faults and
    the run's summary: RUN_DIR/report/index.html."""
    with user_errors():
        page = render_report(run_dir)
        console.print(f"report: {page}")
