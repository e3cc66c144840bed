"""``lab audit MODULE:ATTR``: the checks of audit/checks.py on any Celery app, as a table and as JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from audit.checks import FAIL, PASS, WARN, audit, summary
from audit.loader import load_app
from lab.console import console, user_errors, write_json

STYLE = {PASS: "green", WARN: "yellow", FAIL: "red"}


def audit_command(
    app_spec: Annotated[
        str, typer.Argument(metavar="MODULE:ATTR", help="The Celery app, e.g. app.core.celery:celery_app.")
    ] = "app.core.celery:celery_app",
    broker_url: Annotated[
        str | None, typer.Option(help="A Redis broker to ask about persistence (CONFIG GET appendonly, save).")
    ] = None,
    app_path: Annotated[Path | None, typer.Option(help="Put this directory on sys.path first (your project).")] = None,
    json_path: Annotated[
        Path | None,
        typer.Option(
            "--json",
            help="Write {app, findings: [{id, status, found, fix, evidence, experiment}], "
            "summary: {pass, warn, fail}, passed}.",
        ),
    ] = None,
    strict: Annotated[bool, typer.Option(help="Fail on warnings too.")] = False,
) -> None:
    """Check a Celery app's configuration against the guide's checklist and the hazards the chaos lab measured.

    Imports the app without starting a worker. Exit 0 when nothing fails (--strict: nothing warns either), 1
    when something does, 2 when the app cannot be loaded or the broker cannot be read."""
    with user_errors():
        celery = load_app(app_spec, app_path)
        findings = audit(celery, broker_url)
    counts = summary(findings)
    passed = counts[FAIL] == 0 and (not strict or counts[WARN] == 0)
    table = Table(title=f"lab audit {app_spec}")
    for col in ("check", "status", "found", "fix", "evidence"):
        table.add_column(col, overflow="fold")
    for f in findings:
        table.add_row(f.id, f"[{STYLE[f.status]}]{f.status}[/]", f.found, f.fix, f.evidence or "")
    console.print(table)
    console.print(f"{counts[PASS]} pass, {counts[WARN]} warn, {counts[FAIL]} fail: {'PASS' if passed else 'FAIL'}")
    write_json(
        json_path,
        {"app": app_spec, "findings": [f.as_dict() for f in findings], "summary": counts, "passed": passed},
    )
    if not passed:
        raise typer.Exit(1)
