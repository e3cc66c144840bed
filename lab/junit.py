"""JUnit XML reports (``--junit PATH``) that CI systems render natively, written with junitparser.

One ``<testsuite>`` per thing with a journal (an experiment, a matrix cell, an audited app), its
``<properties>`` naming where the journal is (the Jenkins/Surefire schema, tests/vendor/junit/junit-10.xsd,
allows properties on suites only); one ``<testcase>`` per verdict inside it. A failing verdict is a
``<failure>`` whose message says what was measured against what was expected; a run that could not be
judged (an error) is an ``<error>``; n/a is ``<skipped>`` with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from junitparser import Error, Failure, JUnitXml, Skipped, TestCase, TestSuite

from lab.console import check_outputs
from lab.errors import LabError


@dataclass
class Case:
    name: str
    classname: str
    seconds: float | None = None
    failure: str | None = None  # one line: measured against expected
    error: str | None = None
    skipped: str | None = None
    output: str = ""  # system-out: the figures behind the verdict


@dataclass
class Suite:
    name: str
    cases: Sequence[Case]
    properties: Mapping[str, object] = field(default_factory=dict)


def _case(case: Case) -> TestCase:
    # The schema's time is at most 3 decimals.
    tc = TestCase(case.name, case.classname, None if case.seconds is None else round(case.seconds, 3))
    if case.failure is not None:
        tc.result = [Failure(case.failure, "verdict")]
    elif case.error is not None:
        tc.result = [Error(case.error, "error")]
    elif case.skipped is not None:
        tc.result = [Skipped(case.skipped)]
    if case.output:
        tc.system_out = case.output
    return tc


def to_xml(name: str, suites: Sequence[Suite]) -> JUnitXml:
    xml = JUnitXml(name)
    for suite in suites:
        ts = TestSuite(suite.name)
        for key, value in suite.properties.items():
            ts.add_property(key, str(value))
        for case in suite.cases:
            ts.add_testcase(_case(case))
        ts.update_statistics()
        if ts.time is not None:
            ts.time = round(float(ts.time), 3)
        xml.add_testsuite(ts)
    xml.update_statistics()
    if xml.time is not None:
        xml.time = round(float(xml.time), 3)
    # junitparser counts skipped tests on <testsuites> too; the schema allows that count on <testsuite> only.
    xml._elem.attrib.pop("skipped", None)
    return xml


def write_junit(path: Path | None, name: str, suites: Sequence[Suite]) -> None:
    """``--junit PATH``: write the report; an unwritable path is bad input (exit 2)."""
    if path is None:
        return
    check_outputs(junit=path)
    try:
        to_xml(name, suites).write(str(path), pretty=True)
    except OSError as exc:
        raise LabError(f"--junit {path}: cannot write it: {exc}") from None
