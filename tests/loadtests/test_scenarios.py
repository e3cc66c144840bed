"""Every named scenario, a few seconds each, against one real Stack (redis-server, celery workers, uvicorn),
with Locust running as real child processes; and ``lab load`` itself, for exit codes and messages."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from lab.brokerview import RedisBrokerView
from lab.profiles import ROOT
from lab.rundirs import results_dir
from lab.stack import Stack, StackConfig
from loadtests.common.config import get_scenario
from loadtests.runner import demo_section, run_scenario
from tests.support import junit_report

RUN_S = 4.0
CONTRACT_KEYS = {
    "scenario",
    "config",
    "duration_s",
    "requests",
    "failures",
    "rps",
    "http_latency_ms",
    "task_latency_ms",
    "tasks",
    "thresholds",
    "passed",
    "loadgen_cpu_percent",
}


@pytest.fixture(scope="module")
def load_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One Stack for the scenarios here (never the session's app_stack: load would disturb its tests)."""
    cfg = StackConfig(
        run_dir=tmp_path_factory.mktemp("load-stack"),
        workers=1,
        overrides=dict(get_scenario("smoke").overrides),
        ai_latency="lognormal:0.02,0.5",
    )
    with Stack(cfg) as stack:
        yield stack


def backend_states(stack: Stack) -> dict[str, str]:
    """What the result backend itself holds: every task result, by id (independent of the load's ledger)."""
    client = stack.redis(1)
    out = {}
    for key in client.scan_iter("celery-task-meta-*", count=1000):
        raw = client.get(key)
        if raw:
            out[key.decode().removeprefix("celery-task-meta-")] = json.loads(raw)["status"]
    client.close()
    return out


CASES = [
    ("smoke", 0),
    ("steady", 2),  # distributed: Locust master + 2 worker processes
    ("step", 0),
    ("spike", 0),
    ("soak", 0),
    ("broker-direct", 0),
]


@pytest.mark.parametrize(("name", "processes"), CASES, ids=[c[0] for c in CASES])
def test_scenario_summary_agrees_with_the_result_backend(
    load_stack: Stack, tmp_path: Path, name: str, processes: int, no_leftovers: None
) -> None:
    sc = get_scenario(name)
    sc = sc.with_overrides(duration_s=RUN_S, users=min(sc.users, 6))
    before = backend_states(load_stack)
    console = Console(stderr=True, width=120)
    if name == "smoke":  # through the entry point `lab demo` uses
        summary = demo_section(load_stack, console, duration_s=RUN_S)
        run_dir = Path(summary["run_dir"])
    else:
        run_dir = tmp_path / name
        summary = run_scenario(sc, run_dir=run_dir, console=console, stack=load_stack, processes=processes)

    assert set(summary) >= CONTRACT_KEYS
    assert json.loads((run_dir / "summary.json").read_text()) == summary
    for produced in ("locust.json", "locust.html", "locust_stats.csv"):
        assert (run_dir / produced).stat().st_size > 0, produced

    # The system's own count: results that appeared in the backend during this run.
    new = {tid: st for tid, st in backend_states(load_stack).items() if tid not in before}
    states = Counter(new.values())
    t = summary["tasks"]
    assert t["sent"] > 0 and t["unfinished"] == 0
    assert t["sent"] == len(new) == states["SUCCESS"] + states["FAILURE"]
    assert (t["succeeded"], t["failed"]) == (states["SUCCESS"], states["FAILURE"])

    assert summary["requests"] > 0 and summary["rps"] > 0
    assert summary["http_latency_ms"]["p95"] is not None and summary["task_latency_ms"]["p95"] is not None
    types = {row["type"] for row in summary["by_request"]}
    assert {"TASK", "QUEUE"} <= types, types  # end-to-end latency and queue wait beside the client's timings
    assert ("ENQUEUE" in types) == (name == "broker-direct")
    assert summary["thresholds"] and summary["passed"] == all(v["ok"] for v in summary["thresholds"])
    assert {"name", "limit", "value", "ok"} <= set(summary["thresholds"][0])
    assert 0 <= summary["loadgen_cpu_percent"] <= 100 * (processes + 1)
    # The run's Prometheus exporter (scraped by lab load for its progress line) counted this run's requests
    # and task completions; its last scrape can precede the last few requests, never exceed them.
    scrape = summary["prometheus_last_scrape"]
    assert summary["prometheus"]["port"] > 0 and scrape is not None
    assert 0 < scrape["requests"] <= summary["requests"] and scrape["tasks"] > 0
    assert len(summary["loadgen_cpu"]) == processes + 1


def test_dispatch_builds_a_backlog_and_accounts_for_every_task_in_the_broker(load_stack: Stack, tmp_path: Path) -> None:
    # Dispatch measures the API and builds a backlog on purpose: after its drain, tasks still queued or unacked
    # are held by the broker, not lost; a 1-second drain leaves plenty of them.
    sc = dataclasses.replace(get_scenario("dispatch").with_overrides(duration_s=RUN_S, users=6), drain_s=1.0)
    view = load_stack.broker_view()
    assert isinstance(view, RedisBrokerView)
    try:
        summary = run_scenario(sc, run_dir=tmp_path / "dispatch", console=Console(stderr=True), stack=load_stack)
    finally:
        view.clear()  # the backlog, built on purpose, is not for the next test
    t = summary["tasks"]
    checked = {v["name"]: v for v in summary["thresholds"]}
    assert "max_unfinished_tasks" not in checked
    assert checked["max_unaccounted_tasks"]["value"] == 0 and checked["max_unaccounted_tasks"]["ok"]
    assert t["held_by_broker"] > 0, t  # a backlog was there to account for: the check did not pass vacuously
    assert t["unfinished"] == t["held_by_broker"] and summary["passed"]


def lab(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    # Without the caller's broker settings: with --host, the lab would read those (not the API) to drain.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "CACHE_URL"))}
    return subprocess.run(
        [sys.executable, "-m", "lab.cli", "load", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )


def test_an_impossible_threshold_exits_1_and_names_it(load_stack: Stack, tmp_path: Path) -> None:
    out = tmp_path / "summary.json"
    api = load_stack.urls["api"]
    junit = tmp_path / "load.xml"
    args = ["--duration", "3", "--users", "2", "-t", "min_rps=1000000", "--json", str(out), "--junit", str(junit)]
    res = lab("smoke", "--host", api, *args)
    assert res.returncode == 1, res.stderr[-2000:]
    cases = {c["name"]: c for c in junit_report(junit)["load smoke"]}  # a testcase per threshold
    assert "below the minimum 1000000 req/s" in cases["min_rps"]["failure"]
    assert [n for n, c in cases.items() if c["failure"]] == ["min_rps"]
    assert "min_rps" in res.stderr and "below the minimum 1000000 req/s" in res.stderr
    summary = json.loads(out.read_text())
    failed = [v for v in summary["thresholds"] if not v["ok"]]
    assert [v["name"] for v in failed] == ["min_rps"] and not summary["passed"]
    assert summary["config"] == "external" and summary["tasks"]["unfinished"] == 0


BAD_INPUT = [
    (["no-such-scenario"], "unknown scenario 'no-such-scenario'"),
    (["smoke", "--duration", "soon"], "bad duration 'soon'"),
    (["smoke", "--duration", "-3"], "bad duration"),
    (["smoke", "--host", "http://127.0.0.1:9"], "is not reachable"),
    (["smoke", "--config", "no-such-profile"], "config profile 'no-such-profile' not found"),
    (["smoke", "--host", "http://127.0.0.1:9", "--prometheus"], "--prometheus starts Prometheus in the local stack"),
]


@pytest.mark.stack  # six `lab` subprocesses: seconds of imports each
def test_bad_input_exits_2_with_one_message_and_starts_nothing() -> None:
    before = {p.name for p in results_dir().glob("load-*")}
    # All at once: each is a fresh `lab` process, and most of its time is importing.
    running = [
        (
            args,
            message,
            subprocess.Popen(
                [sys.executable, "-m", "lab.cli", "load", *args],
                cwd=ROOT,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            ),
        )
        for args, message in BAD_INPUT
    ]
    for args, message, proc in running:
        _, err = proc.communicate(timeout=90)
        assert proc.returncode == 2, (args, err)
        assert message in err, (args, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) <= 3, (args, err)
    assert {p.name for p in results_dir().glob("load-*")} == before
