"""Verdicts where CI systems show them: ``publish`` writes the ``--junit`` report and, when
``GITHUB_STEP_SUMMARY`` names a file (GitHub Actions), appends the same suites there as a Markdown table."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from lab.junit import Case, Suite, write_junit

ENV = "GITHUB_STEP_SUMMARY"


def _verdict(case: Case) -> tuple[str, str]:
    if case.failure is not None:
        return "❌ fail", case.failure
    if case.error is not None:
        return "⚠️ error", case.error
    if case.skipped is not None:
        return "n/a", case.skipped
    return "✅ pass", case.output


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(title: str, suites: Sequence[Suite]) -> str:
    cases = [case for suite in suites for case in suite.cases]
    failed = sum(c.failure is not None or c.error is not None for c in cases)
    lines = [f"### {title}: {'FAIL' if failed else 'PASS'} ({len(cases) - failed}/{len(cases)} passed)", ""]
    lines += ["| check | verdict | detail |", "| --- | --- | --- |"]
    for case in cases:
        verdict, detail = _verdict(case)
        lines.append(f"| `{_cell(case.name)}` | {verdict} | {_cell(detail)} |")
    return "\n".join(lines) + "\n\n"


def append_step_summary(title: str, suites: Sequence[Suite], environ: Mapping[str, str] | None = None) -> bool:
    """Append the table when the variable is set; False when it is not (or the file cannot be written: a
    summary is a courtesy, never a reason for a run to fail)."""
    target = (os.environ if environ is None else environ).get(ENV)
    if not target:
        return False
    try:
        with Path(target).open("a", encoding="utf-8") as fh:
            fh.write(markdown(title, suites))
    except OSError:
        return False
    return True


def publish(junit: Path | None, title: str, suites: Sequence[Suite]) -> None:
    """The JUnit file (when asked for) and the step summary (when running under GitHub Actions)."""
    write_junit(junit, title, suites)
    append_step_summary(title, suites)
