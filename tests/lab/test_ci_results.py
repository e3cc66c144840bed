"""Step summaries: appended (never overwritten) only under GitHub Actions, with every verdict in the table."""

from __future__ import annotations

from pathlib import Path

from lab.ci_results import append_step_summary, publish
from lab.junit import Case, Suite
from tests.support import junit_report

SUITES = [Suite("s", [Case("ok", "x", output="lost 0"), Case("bad|case", "x", failure="lost 3, expected 0")])]


def test_the_table_is_appended_when_github_asks_for_it(tmp_path: Path) -> None:
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    assert append_step_summary("lab chaos suite", SUITES, {"GITHUB_STEP_SUMMARY": str(summary)})
    text = summary.read_text()
    assert text.startswith("earlier step\n")
    assert "### lab chaos suite: FAIL (1/2 passed)" in text
    assert "| `bad\\|case` | ❌ fail | lost 3, expected 0 |" in text
    assert "| `ok` | ✅ pass | lost 0 |" in text


def test_nothing_is_written_outside_github_actions(tmp_path: Path) -> None:
    assert append_step_summary("x", SUITES, {}) is False
    assert append_step_summary("x", SUITES, {"GITHUB_STEP_SUMMARY": str(tmp_path / "no" / "f.md")}) is False


def test_publish_writes_the_junit_report(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    publish(tmp_path / "r.xml", "x", SUITES)
    assert junit_report(tmp_path / "r.xml")["s"][1]["failure"] == "lost 3, expected 0"
