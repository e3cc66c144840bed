"""JUnit reports validate against the Jenkins/Surefire schema, and each verdict kind lands where CI looks."""

from __future__ import annotations

from pathlib import Path

import pytest
import xmlschema

from lab.errors import LabError
from lab.junit import Case, Suite, write_junit
from tests.support import JUNIT_XSD, junit_report


def test_pass_failure_error_and_skip_are_schema_valid(tmp_path: Path) -> None:
    out = tmp_path / "r.xml"
    cases = [
        Case("ok", "lab", 1.23456789, output="figures"),
        Case("bad", "lab", 0.5, failure="lost 3, expected 0"),
        Case("broken", "lab", error="stack did not start"),
        Case("na", "lab", skipped="RabbitMQ has no visibility timeout"),
    ]
    write_junit(out, "lab test", [Suite("s", cases, {"journal": "results/x/journal.json"})])
    suites = junit_report(out)
    by_name = {c["name"]: c for c in suites["s"]}
    assert by_name["ok"]["failure"] is None and by_name["ok"]["error"] is None
    assert by_name["bad"]["failure"] == "lost 3, expected 0"
    assert by_name["broken"]["error"] == "stack did not start"
    assert by_name["na"]["skipped"] == "RabbitMQ has no visibility timeout"
    assert by_name["ok"]["properties"] == {"journal": "results/x/journal.json"}
    text = out.read_text()
    assert 'failures="1"' in text and 'errors="1"' in text and 'skipped="1"' in text


def test_the_schema_check_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "bad.xml"
    bad.write_text('<testsuites><testsuite name="s"><testcase/></testsuite></testsuites>')  # no counts, no name
    with pytest.raises(xmlschema.XMLSchemaValidationError):
        xmlschema.XMLSchema(str(JUNIT_XSD)).validate(str(bad))


def test_a_missing_directory_is_made_and_one_that_cannot_be_is_bad_input(tmp_path: Path) -> None:
    write_junit(tmp_path / "results" / "r.xml", "x", [])  # a CI step's results/ in a fresh checkout
    assert (tmp_path / "results" / "r.xml").is_file()
    (tmp_path / "file").write_text("")
    with pytest.raises(LabError, match="cannot make its directory"):
        write_junit(tmp_path / "file" / "r.xml", "x", [])
