"""`lab bench` refuses bad input with one line and exit 2, before starting anything."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from bench.config import parse_side
from lab.cli import app
from lab.profiles import ProfileError, list_profiles, load_profile

runner = CliRunner()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bench", "reference", "throughput", "--repeat", "2"], "--repeat 2 is too few"),
        (["bench", "run", "reference", "nope"], "config profile 'nope' not found"),
        (["bench", "reference", "reference:NOPE=1"], "NOPE is neither a setting"),
        (["bench", "reference", "reference:CELERY_WORKER_CONCURRENCY=0"], "CELERY_WORKER_CONCURRENCY='0' is invalid"),
        (["bench", "reference", "reference", "-w", "disk"], "unknown workload 'disk'"),
        (["bench", "reference", "throughput:BENCH_BARE=1"], "needs CELERY_TASK_IGNORE_RESULT=false"),
        (["bench", "matrix", "reference", "threads", "--repeat", "1"], "--repeat 1 is too few"),
        (["bench", "matrix", "reference"], "at least two sides"),
        (["bench", "compare", "/nonexistent/old.json", "/nonexistent/new.json"], "does not exist"),
    ],
)
def test_bad_input_exits_2(args, message, tmp_path):
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split())


def test_compare_rejects_other_json(tmp_path):
    other = tmp_path / "x.json"
    other.write_text('{"hello": 1}')
    res = runner.invoke(app, ["bench", "compare", str(other), str(other)])
    assert res.exit_code == 2
    assert "not a `lab bench` result" in " ".join(res.output.split())


def test_shipped_profiles_load_and_describe_themselves():
    names = set(list_profiles())
    assert {"reference", "throughput", "threads", "prefetch4", "early-ack"} <= names
    for name in ("throughput", "threads", "prefetch4", "early-ack"):
        assert load_profile(name), name  # only known Settings env names, or load_profile raises
    res = runner.invoke(app, ["profiles"])
    assert res.exit_code == 0
    for name in ("throughput", "threads", "prefetch4", "early-ack"):
        line = next(line for line in res.output.splitlines() if line.startswith(name))
        assert len(line.split(None, 1)[1]) > 20  # a description, not just the name


def test_side_specs():
    side = parse_side("prefetch4:CELERY_WORKER_CONCURRENCY=2,bench_sleep_ms=40", "B")
    assert side.profile == "prefetch4"
    assert side.overrides == {"CELERY_WORKER_CONCURRENCY": "2"}
    assert side.knobs == {"BENCH_SLEEP_MS": "40"}
    with pytest.raises(ProfileError, match="NAME=VALUE"):
        parse_side("reference:CELERY_WORKER_CONCURRENCY")
    with pytest.raises(ProfileError, match="number >= 0"):
        parse_side("reference:BENCH_SLEEP_MS=-1")
