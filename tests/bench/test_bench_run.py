"""Real benchmark runs (redis-server + celery workers per repetition), kept small.

One interleaved matrix serves both claims: A against an identical A' must be "Not significant", and a side
whose task sleeps three times as long must be reported slower, significantly. Long sleeps with few pool slots
keep the runs mostly sleep-bound, but on a machine loaded by other tests each task still carries tens of ms of
overhead (dispatch, result, timeline), added to both sides; 3x the sleep keeps the B/A ratio near 0.45 there,
far from what round-to-round noise (a few %) can produce. Alpha 0.01 keeps the A/A false-alarm chance at 1 %
by construction.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from bench.config import BenchConfig, parse_side
from bench.report import write_outputs
from bench.runner import run_bench
from bench.workloads import get_workload
from lab.cli import app
from tests.support import junit_report

FAST = "reference:BENCH_SLEEP_MS=60"
SLOW = "reference:BENCH_SLEEP_MS=180"
STOCK = "stock:BENCH_SLEEP_MS=60"  # plain Celery (bench/stock_app.py) with the same task body
JSON_KEYS = {"a_median", "b_median", "ratio", "ci_low", "ci_high", "p_value", "significant", "verdict"}


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    cfg = BenchConfig(
        sides=[parse_side(FAST, "A"), parse_side(FAST, "A2"), parse_side(SLOW, "slow"), parse_side(STOCK, "stock")],
        workload=get_workload("io"),
        repeat=3,
        tasks=100,
        latency_s=0.5,
        reruns=0,
        alpha=0.01,
    )
    run_dir = tmp_path_factory.mktemp("bench")
    doc = run_bench(cfg, run_dir)
    for run in doc["runs"]:  # shown when a test fails: the raw numbers behind a verdict
        f = run["figures"]
        print(run["side"], run["round"], f"{f['throughput']:.1f}/s", f"disturbed {f['disturbance_pct']:.0f}%")
    for c in doc["comparisons"]:
        tp = c["figures"]["throughput"]
        print(c["b"], "vs", c["a"], tp["verdict"], tp["ratio"], tp["ci_low"], tp["ci_high"], tp["p_value"])
    return doc, run_dir


def figures(doc: dict[str, Any], b: str) -> dict[str, Any]:
    return next(c["figures"] for c in doc["comparisons"] if c["b"] == b)


def test_a_vs_a_is_not_significant(bench):
    doc, _ = bench
    tp = figures(doc, "A2")["throughput"]
    assert tp["verdict"] == "Not significant", tp
    assert tp["ci_low"] <= 1 <= tp["ci_high"] or tp["p_value"] >= 0.01


def test_more_work_per_task_is_reported_slower(bench):
    doc, _ = bench
    slow = figures(doc, "slow")
    tp = slow["throughput"]
    assert tp["significant"], tp
    assert tp["verdict"].endswith("x slower"), tp
    assert tp["ci_high"] < 1
    runtime = slow["runtime_p50_ms"]
    assert runtime["verdict"].endswith("x slower"), runtime
    assert runtime["b_median"] > runtime["a_median"] * 2


def test_every_run_is_measured(bench):
    doc, run_dir = bench
    assert sorted((r["side"], r["round"]) for r in doc["runs"]) == sorted(
        (s, n) for s in ("A", "A2", "slow", "stock") for n in (1, 2, 3)
    )
    for run in doc["runs"]:
        f = run["figures"]
        assert f["failures"] == 0, run["run_dir"]
        assert run["queued_before_release"] == 100  # the backlog really waited for its release
        assert f["redis_commands_per_task"] > 5
        assert f["worker_cpu_ms_per_task"] > 0
        assert f["broker_cpu_ms_per_task"] > 0
        assert f["worker_peak_rss_mb"] > 10
        assert 10 < f["worker_rss_per_process_mb"] < f["worker_peak_rss_mb"]
        assert f["broker_ceiling_ops"] > f["throughput"] > 0
        assert 0 < f["ceiling_fraction"] < 1
        assert f["disturbance_pct"] >= 0
        if run["side"] == "stock":  # no timeline in plain Celery: found through the result backend, no latency
            assert run["settings"] == {**run["settings"], "acks_late": True, "concurrency": 2, "task_events": False}
        else:
            assert f["e2e_p50_ms"] >= f["runtime_p50_ms"] > 50
    # the same latency phase rate for every run, and sides alternate which one goes first
    assert len({r["latency_rate"] for r in doc["runs"]}) == 1
    assert len(doc["load_average"]["start"]) == len(doc["load_average"]["end"]) == 3  # beside every figure
    firsts = [min((r for r in doc["runs"] if r["round"] == n), key=lambda r: r["run_dir"])["side"] for n in (1, 2, 3)]
    assert firsts == ["A", "A2", "slow"]
    for comparison in doc["comparisons"]:
        for fig in comparison["figures"].values():
            assert fig.keys() >= JSON_KEYS
    json.dumps(doc)  # finite, serialisable
    paths = write_outputs(doc, run_dir)
    assert paths["png"].stat().st_size > 1000
    assert "| throughput (backlog drain) (tasks/s) |" in paths["markdown"].read_text()


def test_compare_saved_results(bench, tmp_path):
    doc, _ = bench
    saved = tmp_path / "bench.json"
    saved.write_text(json.dumps(doc))
    out = tmp_path / "cmp.json"
    res = CliRunner().invoke(app, ["bench", "compare", str(saved), str(saved), "--side", "slow", "--json", str(out)])
    assert res.exit_code == 0, res.output
    cmp = json.loads(out.read_text())
    assert cmp["figures"]["throughput"]["verdict"] == "Not significant"
    assert cmp["figures"]["throughput"]["ratio"] == pytest.approx(1.0)
    res = CliRunner().invoke(app, ["bench", "compare", str(saved), str(saved), "--side", "nope"])
    assert res.exit_code == 2
    assert "has no side 'nope'" in res.output


def test_a_pull_request_that_slows_down_fails_the_regression_gate(bench, tmp_path):
    # main's stored bench (side A) against a "pull request" whose side A is really the 3x-sleep side.
    doc, _ = bench
    base, pr = tmp_path / "main.json", tmp_path / "pr.json"
    base.write_text(json.dumps(doc))
    swapped = {"A": "slow", "slow": "A"}
    pr_doc = {
        **doc,
        "sides": [{**s, "label": swapped.get(s["label"], s["label"])} for s in doc["sides"]],
        "runs": [{**r, "side": swapped.get(r["side"], r["side"])} for r in doc["runs"]],
    }
    pr.write_text(json.dumps(pr_doc))
    junit = tmp_path / "bench.xml"
    gate = ["bench", "compare", str(base), str(pr), "--side", "A", "--fail-on-regression", "5", "--junit", str(junit)]
    res = CliRunner().invoke(app, gate)
    assert res.exit_code == 1, res.output
    cases = {c["name"]: c for c in junit_report(junit)["lab bench compare pr.json vs main.json"]}
    assert cases["throughput"]["failure"] and "worse, allowed 5%" in cases["throughput"]["failure"]
    # The same files with the same side: nothing regressed, exit 0, every check a pass.
    same = ["bench", "compare", str(base), str(base), "--side", "A", "--fail-on-regression", "5", "--junit", str(junit)]
    res = CliRunner().invoke(app, same)
    assert res.exit_code == 0, res.output
    assert all(c["failure"] is None for cases in junit_report(junit).values() for c in cases)
