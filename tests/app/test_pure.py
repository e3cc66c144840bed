"""Pure pieces: progress, canvas arithmetic, group status, AI stub latency specs, percentiles."""

from __future__ import annotations

import random
import smtplib
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.api.v1.endpoints.tasks import group_status
from app.tasks.email import is_transient_smtp
from app.tasks.export import csv_safe
from app.tasks.progress import progress
from app.tasks.workflows import aggregate, process_value
from lab.ai_stub import parse_latency
from lab.stats import percentile


@given(st.integers(1, 1000), st.lists(st.integers(-5, 2000), max_size=50))
def test_progress_is_monotonic_and_within_bounds(total: int, steps: list[int]) -> None:
    percents = [progress(step, total, "m")["percent"] for step in sorted(steps)]
    assert all(0 <= p <= 100 for p in percents)
    assert percents == sorted(percents)
    assert progress(total, total, "done")["percent"] == 100


@given(st.lists(st.integers(-(10**6), 10**6), max_size=200))
def test_chord_aggregate_equals_sum_of_its_parts(items: list[int]) -> None:
    parts = [process_value(i) for i in items]
    result = aggregate(parts)
    assert result == {"count": len(items), "total": sum(i * i for i in items)}


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        (["SUCCESS", "SUCCESS"], "SUCCESS"),
        (["SUCCESS", "FAILURE"], "FAILURE"),
        (["PENDING", "PENDING"], "PENDING"),
        (["SUCCESS", "PENDING"], "STARTED"),
        (["RETRY", "PENDING"], "STARTED"),
        ([], "PENDING"),
    ],
)
def test_group_status(states: list[str], expected: str) -> None:
    assert group_status(states) == expected


@pytest.mark.parametrize("spec", ["fixed:0.1", "uniform:0.01,0.2", "lognormal:0.05,0.5"])
def test_latency_specs_sample_non_negative(spec: str) -> None:
    dist = parse_latency(spec)
    rng = random.Random(1)
    assert all(dist.sample(rng) >= 0 for _ in range(200))


@pytest.mark.parametrize("spec", ["", "fixed", "fixed:-1", "uniform:2,1", "normal:1,2", "lognormal:1", "fixed:x"])
def test_bad_latency_specs_say_what_is_accepted(spec: str) -> None:
    with pytest.raises(ValueError, match=r"expected fixed:S|LO must not exceed HI"):
        parse_latency(spec)


@given(st.lists(st.floats(-1e9, 1e9, allow_nan=False), min_size=1, max_size=100), st.floats(0, 100))
def test_percentile_within_range_and_monotonic(values: list[float], q: float) -> None:
    p = percentile(values, q)
    assert p is not None
    assert min(values) <= p <= max(values)
    assert percentile(values, 0) == min(values)
    assert percentile(values, 100) == max(values)
    assert percentile(values, min(q + 10, 100)) >= p  # type: ignore[operator]


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (smtplib.SMTPDataError(451, b"4.3.0 try later"), True),
        (smtplib.SMTPDataError(550, b"5.7.1 rejected"), False),
        (smtplib.SMTPSenderRefused(451, b"4.1.8 try later", "from@example.com"), True),
        (smtplib.SMTPSenderRefused(553, b"5.1.8 bad sender", "from@example.com"), False),
        (smtplib.SMTPRecipientsRefused({"a@example.com": (450, b"mailbox busy")}), True),
        (smtplib.SMTPRecipientsRefused({"a@example.com": (550, b"no such user")}), False),
        (smtplib.SMTPRecipientsRefused({"a@x.co": (450, b"busy"), "b@x.co": (550, b"no such user")}), False),
        (smtplib.SMTPAuthenticationError(535, b"5.7.8 bad credentials"), False),
        (smtplib.SMTPAuthenticationError(454, b"4.7.0 temporary auth failure"), True),
        (smtplib.SMTPHeloError(501, b"bad helo"), False),
        (smtplib.SMTPConnectError(421, b"too busy"), True),
        (smtplib.SMTPConnectError(554, b"no service for you"), False),
        (smtplib.SMTPConnectError(-1, b"garbled greeting"), True),
        (smtplib.SMTPServerDisconnected("Connection unexpectedly closed"), True),
        (smtplib.SMTPNotSupportedError("SMTPUTF8 not supported by server"), False),
        (smtplib.SMTPException("No suitable authentication method found."), False),
        (ConnectionRefusedError(111, "Connection refused"), True),
        (TimeoutError("timed out"), True),
        (socket.gaierror(-3, "Temporary failure in name resolution"), True),
        (LookupError("user 1 does not exist"), False),
        (ValueError("bad input"), False),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_only_4xx_and_connection_failures_are_transient(exc: BaseException, transient: bool) -> None:
    assert is_transient_smtp(exc) is transient


@pytest.mark.parametrize("cell", ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx", '=HYPERLINK("http://x")'])
def test_csv_cells_that_start_like_formulas_get_a_quote(cell: str) -> None:
    assert csv_safe(cell) == "'" + cell


@pytest.mark.parametrize("value", ["Ada", "a=b", "", 5, None, "1-2"])
def test_other_csv_cells_are_unchanged(value: object) -> None:
    assert csv_safe(value) == value
