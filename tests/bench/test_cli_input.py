"""`lab bench` refuses bad input with one line and exit 2, before starting anything."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from bench.config import STOCK_APP, parse_side
from lab.apps import load_app
from lab.cli import app
from lab.probes import BENCH_TASKS
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


def test_stock_side_specs():
    side = parse_side("stock", "stock")
    assert (side.profile, side.app.spec, side.probes, side.app.overlay) == ("stock", STOCK_APP, False, {})
    assert side.via_backend  # plain Celery: finished tasks are found through the result backend
    factor = parse_side("stock:worker_send_task_events=true,worker_concurrency=4,BENCH_SLEEP_MS=5")
    assert factor.app.overlay == {"worker_send_task_events": True, "worker_concurrency": 4}
    assert factor.knobs == {"BENCH_SLEEP_MS": "5"}
    with pytest.raises(ProfileError, match="did you mean worker_send_task_events"):
        parse_side("stock:worker_send_task_event=true")
    with pytest.raises(ProfileError, match="NAME=VALUE"):
        parse_side("stock:worker_concurrency")


def test_the_stock_app_carries_the_references_reliability_settings():
    conf = load_app(STOCK_APP).conf
    assert (conf.task_acks_late, conf.task_reject_on_worker_lost, conf.worker_prefetch_multiplier) == (True, True, 1)
    assert conf.accept_content == ["json"] and not conf.worker_send_task_events
    names = parse_side("stock").task_names
    assert set(names) == set(BENCH_TASKS)  # every workload but the reference app's mixed one
    assert set(names.values()) <= set(load_app(STOCK_APP).tasks)
