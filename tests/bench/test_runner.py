"""The bench's run loop: a run whose worker died is discarded and re-run, never kept with its losses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench import runner
from bench.config import BenchConfig, parse_side
from bench.runner import WorkerDied
from bench.workloads import get_workload
from lab.errors import StackError


def fake_result(disturbance: float = 0.0) -> dict[str, Any]:
    return {"figures": {"disturbance_pct": disturbance, "throughput": 100.0}, "latency_rate": 40.0}


def config(reruns: int = 1) -> BenchConfig:
    sides = [parse_side("reference", "A"), parse_side("reference", "B")]
    return BenchConfig(sides=sides, workload=get_workload("noop"), repeat=3, reruns=reruns)


def run_rounds(cfg: BenchConfig, tmp_path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    runs: list[dict[str, Any]] = []
    discarded: list[dict[str, Any]] = []
    by_label = {s.label: s for s in cfg.sides}
    runner._rounds(cfg, tmp_path, lambda _m, _d: None, by_label, list(by_label), runs, discarded)
    return runs, discarded


def test_a_run_whose_worker_died_is_discarded_and_run_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outcomes = iter([WorkerDied("w1 exited with code -9")] + [None] * 20)

    def execute(self: runner.Run) -> dict[str, Any]:
        if (outcome := next(outcomes)) is not None:
            raise outcome
        return fake_result()

    monkeypatch.setattr(runner.Run, "execute", execute)
    runs, discarded = run_rounds(config(), tmp_path)
    # Before: the run was kept and its missing tasks counted as the side's failures.
    assert len(runs) == 6 and [r["side"] for r in runs].count("A") == 3
    assert len(discarded) == 1 and "worker died" in discarded[0]["discarded"]
    assert runs[0]["attempt"] == 2  # the re-run of the first run took its place


def test_a_worker_dying_in_every_attempt_fails_the_bench(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def execute(self: runner.Run) -> dict[str, Any]:
        raise WorkerDied("w1 exited with code 1")

    monkeypatch.setattr(runner.Run, "execute", execute)
    with pytest.raises(StackError, match="a worker died in each of 2 attempts"):
        run_rounds(config(reruns=1), tmp_path)
