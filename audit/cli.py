"""``lab audit MODULE:ATTR``: the checks of audit/checks.py on any Celery app, as a table and as JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from audit.checks import FAIL, PASS, WARN, Finding, audit, summary
from lab.apps import REFERENCE_APP, AppInputError, load_app
from lab.ci_results import publish
from lab.cli_options import AppOpt
from lab.console import check_outputs, console, user_errors, write_json
from lab.junit import Case, Suite

STYLE = {PASS: "green", WARN: "yellow", FAIL: "red"}


def audit_command(
    app_arg: Annotated[
        str | None,
        typer.Argument(
            metavar="[MODULE:ATTR]", help=f"The Celery app (or --app); default {REFERENCE_APP}.", show_default=False
        ),
    ] = None,
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
    junit: Annotated[
        Path | None, typer.Option(help="Write a JUnit XML report: one testcase per finding, a fail is a failure.")
    ] = None,
    app: AppOpt = None,
) -> None:
    """Check a Celery app's configuration against the guide's checklist and the hazards the chaos lab measured.

    Imports the app without starting a worker. Exit 0 when nothing fails (--strict: nothing warns either), 1
    when something does, 2 when the app cannot be loaded or the broker cannot be read."""
    with user_errors():
        if app_arg and app and app_arg != app:
            raise AppInputError(f"two apps named: {app_arg} and --app {app}; give one")
        app_spec = app_arg or app or REFERENCE_APP
        check_outputs(json_path=json_path, junit=junit)
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
    with user_errors():
        publish(junit, f"lab audit {app_spec}", [junit_suite(app_spec, findings, strict)])
    if not passed:
        raise typer.Exit(1)


def junit_suite(app_spec: str, findings: list[Finding], strict: bool) -> Suite:
    """A testcase per finding; a fail (with --strict, a warn too) is a failure whose message says what was
    found and the fix, and names the matrix cell that shows the consequence."""
    cases = []
    for f in findings:
        case = Case(f.id, "audit", output=f"{f.status}: {f.found}")
        if f.status == FAIL or (strict and f.status == WARN):
            case.failure = f"{f.status}: {f.found}; fix: {f.fix}" + (f" (evidence: {f.evidence})" if f.evidence else "")
        cases.append(case)
    return Suite(f"audit {app_spec}", cases, {"app": app_spec, "strict": strict})
