"""Pure parts of the load tooling: scenario parsing, shapes, the Prometheus store, summary arithmetic."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from loadtests.common.config import (
    SHAPES,
    ScenarioError,
    from_option,
    get_scenario,
    load_scenarios,
    parse_duration,
    parse_threshold,
    parse_wait,
)
from loadtests.common.metrics import BUCKETS, MetricStore, StoreCollector
from loadtests.common.shapes import target
from loadtests.summary import TaskRecord, check_thresholds, request_totals, task_totals, threshold_values


def test_every_scenario_in_the_file_is_valid_and_the_required_ones_exist() -> None:
    scenarios = load_scenarios()
    assert {"smoke", "steady", "spike", "soak", "broker-direct"} <= set(scenarios)
    assert {s.shape for s in scenarios.values()} >= {"steady", "step", "spike", "soak"}
    assert scenarios["broker-direct"].user_classes == ["CeleryProducer"]
    for s in scenarios.values():
        assert s.thresholds, s.name


@given(h=st.integers(0, 5), m=st.integers(0, 59), s=st.integers(0, 59))
def test_duration_spans_add_up(h: int, m: int, s: int) -> None:
    text = (f"{h}h" if h else "") + (f"{m}m" if m else "") + (f"{s}s" if s else "")
    total = h * 3600 + m * 60 + s
    if total == 0:
        with pytest.raises(ScenarioError):
            parse_duration(text or "0")
    else:
        assert parse_duration(text) == total


@pytest.mark.parametrize("bad", ["abc", "", "-5", "5x", "1m1h", "0s", "10d"])
def test_bad_durations_are_refused_with_the_accepted_forms(bad: str) -> None:
    with pytest.raises(ScenarioError, match=r"30s, 5m, 1h30m|more than 0"):
        parse_duration(bad)


def test_wait_and_threshold_parsing() -> None:
    assert parse_wait("between:0.5,1.5") == ("between", (0.5, 1.5))
    assert parse_wait("none") == ("none", ())
    for bad in ("between:2,1", "constant_throughput:0", "sometimes"):
        with pytest.raises(ScenarioError):
            parse_wait(bad)
    assert parse_threshold("p95_http_ms=250") == ("p95_http_ms", 250.0)
    for bad in ("p95=1", "min_rps", "min_rps=x", "min_rps=-1"):
        with pytest.raises(ScenarioError):
            parse_threshold(bad)


def test_scenario_file_errors_name_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text('[scenarios.x]\nusers = 1\nduration = "5s"\nweights = { AiUser = 1 }\nusres = 2\n')
    with pytest.raises(ScenarioError, match=r"unknown key 'usres' \(did you mean users\?\)"):
        load_scenarios(path)
    path.write_text('[scenarios.x]\nusers = 1\nduration = "5s"\nweights = { AIUser = 1 }\n')
    with pytest.raises(ScenarioError, match="AIUser"):
        load_scenarios(path)
    with pytest.raises(ScenarioError, match="unknown scenario 'smok' \\(did you mean smoke\\?\\)"):
        get_scenario("smok")


@given(
    shape=st.sampled_from(SHAPES),
    users=st.integers(1, 500),
    duration=st.floats(1, 3600),
    frac=st.floats(0, 1, exclude_max=True),
)
def test_shapes_stay_within_one_and_peak_users_until_the_duration(
    shape: str, users: int, duration: float, frac: float
) -> None:
    params = {"steps": 4, "baseline": 0.2, "spike_at": 0.4, "spike_len": 0.2, "ramp": 0.05}
    got = target(shape, duration * frac, users=users, spawn_rate=5, duration_s=duration, params=params)
    assert got is not None
    assert 1 <= got[0] <= users
    assert target(shape, duration, users=users, spawn_rate=5, duration_s=duration, params=params) is None


def test_spike_and_step_reach_the_peak_and_step_is_monotonic() -> None:
    ts = [i / 10 for i in range(100)]
    spike = [target("spike", t, users=50, spawn_rate=50, duration_s=10) for t in ts]
    assert max(u for u, _ in spike) == 50 and min(u for u, _ in spike) == 10  # type: ignore[misc]
    step = [target("step", t, users=40, spawn_rate=5, duration_s=10, params={"steps": 4})[0] for t in ts]  # type: ignore[index]
    assert step == sorted(step) and set(step) == {10, 20, 30, 40}


observations = st.lists(
    st.tuples(
        st.sampled_from(["GET", "POST", "TASK", "QUEUE", "ENQUEUE"]),
        st.sampled_from(["/a", "/b", "flow"]),
        st.one_of(st.none(), st.floats(0, 120_000)),
        st.booleans(),
    ),
    max_size=60,
)


@given(first=observations, second=observations)
def test_worker_snapshots_merged_on_the_master_equal_one_store_seeing_everything(first: list, second: list) -> None:
    whole, worker_a, worker_b, master = MetricStore(), MetricStore(), MetricStore(), MetricStore()
    for obs in first:
        whole.observe(*obs)
        worker_a.observe(*obs)
    for obs in second:
        whole.observe(*obs)
        worker_b.observe(*obs)
    master.merge(worker_a.snapshot())
    master.merge(worker_b.snapshot())
    assert worker_a.snapshot(reset=False) == MetricStore().snapshot(reset=False)  # shipped means cleared
    assert master.requests == whole.requests and master.failures == whole.failures
    for key, hist in whole.latency.items():
        assert master.latency[key].counts == hist.counts
        assert master.latency[key].total == pytest.approx(hist.total)
    assert not any(k[0] == "QUEUE" for k in master.requests)  # queue wait is a view of a task, not a request


def test_exposition_uses_the_dashboard_names_and_types() -> None:
    store = MetricStore()
    store.observe("POST", "/api/v1/users", 12.0, False)
    store.observe("TASK", "welcome_email", 1500.0, True)
    registry = CollectorRegistry()
    registry.register(StoreCollector(store, lambda: 7))
    text = generate_latest(registry).decode()
    assert "locust_users 7.0" in text
    assert 'locust_requests_total{method="POST",name="/api/v1/users"} 1.0' in text
    assert 'locust_failures_total{method="TASK",name="welcome_email"} 1.0' in text
    assert 'locust_response_time_seconds_bucket{le="0.025",method="POST",name="/api/v1/users",type="http"} 1.0' in text
    assert (
        'locust_response_time_seconds_bucket{le="1.0",method="TASK",name="welcome_email",type="task_e2e"} 0.0' in text
    )
    assert 'locust_response_time_seconds_count{method="TASK",name="welcome_email",type="task_e2e"} 1.0' in text
    assert len(BUCKETS) == 16


@pytest.mark.parametrize("observed", [False, True], ids=["before-any-request", "after-requests"])
def test_exposition_passes_promtool_check_metrics(observed: bool) -> None:
    # `lab dashboards check` lints the live endpoint during its load; this is the same lint without Locust,
    # on the exposition as it is at start (families without samples) and once requests were seen.
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian package prometheus) is not installed")
    store = MetricStore()
    if observed:
        store.observe("POST", "/api/v1/users", 12.0, False)
        store.observe("TASK", "send_welcome_email", 1500.0, True)
        store.observe("QUEUE", "send_welcome_email", 30.0, False)
    registry = CollectorRegistry(auto_describe=True)  # as loadtests/common/plugin.py serves it
    registry.register(StoreCollector(store, lambda: 3))
    res = subprocess.run([promtool, "check", "metrics"], input=generate_latest(registry), capture_output=True)
    assert res.returncode == 0, (res.stdout + res.stderr).decode()


def _entry(method: str, name: str, times: dict[int, int], fails: int, secs: dict[int, int]) -> dict:
    return {
        "method": method,
        "name": name,
        "num_requests": sum(times.values()),
        "num_failures": fails,
        "response_times": {str(k): v for k, v in times.items()},
        "num_reqs_per_sec": {str(k): v for k, v in secs.items()},
    }


def test_request_totals_leave_task_events_out_of_http_numbers() -> None:
    entries = [
        _entry("POST", "/a", {10: 90, 100: 10}, 1, {1000: 50, 1009: 50}),
        _entry("TASK", "flow", {5000: 100}, 0, {1000: 50, 1020: 50}),
    ]
    t = request_totals(entries)
    assert t["requests"] == 100 and t["failures"] == 1 and t["failure_ratio"] == 0.01
    assert t["duration_s"] == 10.0 and t["rps"] == 10.0
    assert t["http_latency_ms"]["p50"] == 10.0 and t["http_latency_ms"]["p99"] == 100.0


def test_task_totals_count_final_states_retries_and_latency() -> None:
    tl = {"sent": 100.0, "started": 100.5, "finished": 101.0, "attempt": 1}
    records = {
        "a": TaskRecord("x", "SUCCESS", tl),
        "b": TaskRecord("x", "SUCCESS", {**tl, "attempt": 2, "finished": 103.0}),
        "c": TaskRecord("y", "FAILURE", tl),
        "d": TaskRecord("y", "PENDING", None),
    }
    t = task_totals(records)
    assert t["tasks"] == {
        "sent": 4,
        "succeeded": 2,
        "failed": 1,
        "retried": 1,
        "unfinished": 1,
        "by_state": {"SUCCESS": 2, "FAILURE": 1, "PENDING": 1},
    }
    assert t["task_latency_ms"]["p50"] == 1000.0 and t["queue_wait_ms"]["p95"] == 500.0
    assert t["by_flow"]["x"]["sent"] == 2


def test_a_backlog_held_by_the_broker_is_accounted_for_and_a_task_in_neither_place_is_lost() -> None:
    tasks = {"tasks": {"succeeded": 5, "failed": 0, "unfinished": 4}, "task_latency_ms": {"p95": 1.0}}
    totals = {"failure_ratio": 0.0, "http_latency_ms": {"p95": 1.0}, "rps": 1.0}
    assert threshold_values(totals, tasks)["max_unaccounted_tasks"] is None  # drain = "finish": not looked up
    assert threshold_values(totals, tasks, held=4)["max_unaccounted_tasks"] == 0
    lost = check_thresholds({"max_unaccounted_tasks": 0}, threshold_values(totals, tasks, held=3))[0]
    assert not lost["ok"] and "1 tasks is 1 tasks" in lost["message"]


def test_threshold_verdicts_say_which_failed_and_by_how_much() -> None:
    verdicts = check_thresholds(
        {"p95_http_ms": 100, "min_rps": 50, "max_failure_ratio": 0.01, "p95_task_ms": 1},
        {"p95_http_ms": 150.0, "min_rps": 60.0, "max_failure_ratio": 0.0, "p95_task_ms": None},
    )
    by = {v["name"]: v for v in verdicts}
    assert (
        not by["p95_http_ms"]["ok"]
        and "p95_http_ms: 150 ms is 50 ms, 50 % above the maximum 100 ms" in by["p95_http_ms"]["message"]
    )
    assert by["min_rps"]["ok"] and by["max_failure_ratio"]["ok"]
    assert not by["p95_task_ms"]["ok"] and "no data" in by["p95_task_ms"]["message"]
    low = check_thresholds({"min_rps": 50}, {"min_rps": 20.0})[0]
    assert not low["ok"] and "30 req/s, 60 % below the minimum 50 req/s" in low["message"]


def test_locust_reads_a_resolved_scenario_or_a_name_with_the_broker_from_the_environment() -> None:
    resolved = get_scenario("steady").with_overrides(users=3, duration_s=7)
    assert from_option(resolved.to_json()) == resolved
    env = {"CELERY_BROKER_URL": "redis://h:1/0", "CELERY_RESULT_BACKEND": "redis://h:1/1", "CACHE_URL": "redis://h:1/2"}
    by_name = from_option("broker-direct", env)
    assert by_name.uses_broker and by_name.broker["broker_url"] == "redis://h:1/0"
    assert from_option("broker-direct", {"CELERY_BROKER_URL": "redis://h:1/0"}).broker == {}


def test_stack_config_with_prometheus_starts_it_and_the_exporter(tmp_path: Path) -> None:
    from loadtests.runner import stack_config

    sc = get_scenario("smoke")
    assert stack_config(sc, tmp_path).prometheus is False
    cfg = stack_config(sc, tmp_path, prometheus=True)
    # StackConfig(prometheus=True) implies the exporter; run_scenario then adds Locust as job "locust".
    assert cfg.prometheus is True and cfg.profile == sc.profile and cfg.workers == sc.workers


def test_request_names_print_as_text_not_rich_markup() -> None:
    # Before: "[id]" in /api/v1/users/[id]/export was read as rich markup and printed as /api/v1/users//export.
    import io as _io

    from rich.console import Console

    from loadtests.runner import print_summary

    lat = {"p50": 1.0, "p95": 2.0, "p99": 3.0}
    row = {"type": "POST", "name": "/api/v1/users/[id]/export", "requests": 3, "failures": 0, **lat}
    summary = {
        "scenario": "smoke", "by_request": [row], "tasks": {"sent": 3, "succeeded": 3, "failed": 0, "retried": 0,
        "unfinished": 0}, "http_latency_ms": lat, "task_latency_ms": lat, "queue_wait_ms": lat, "requests": 3,
        "failures": 0, "duration_s": 1.0, "rps": 3.0, "loadgen_cpu_percent": 1.0, "warnings": [],
        "thresholds": [{"ok": True, "message": "p95 of /api/v1/users/[id]/export below 500 ms"}], "passed": True,
        "files": {"summary": "summary.json"},
    }  # fmt: skip
    buf = _io.StringIO()
    print_summary(summary, Console(file=buf, width=200))
    text = buf.getvalue()
    assert text.count("/api/v1/users/[id]/export") == 2
    assert "/users//export" not in text
