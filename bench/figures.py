"""The figures a bench run measures, which way is better for each, and their A/B comparison."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench import stats


@dataclass(frozen=True)
class Figure:
    key: str  # the key in each run's ``figures`` dict and in the JSON's ``figures``
    label: str
    unit: str
    higher_is_better: bool
    words: tuple[str, str] = stats.SPEED


FIGURES: tuple[Figure, ...] = (
    Figure("throughput", "throughput (backlog drain)", "tasks/s", True),
    Figure("e2e_p50_ms", "end-to-end p50", "ms", False),
    Figure("e2e_p95_ms", "end-to-end p95", "ms", False),
    Figure("e2e_p99_ms", "end-to-end p99", "ms", False),
    Figure("queue_wait_p50_ms", "queue wait p50", "ms", False),
    Figure("queue_wait_p95_ms", "queue wait p95", "ms", False),
    Figure("runtime_p50_ms", "runtime p50", "ms", False),
    Figure("runtime_p95_ms", "runtime p95", "ms", False),
    Figure("failures", "failed or lost tasks", "tasks", False, stats.COUNT),
    Figure("worker_cpu_ms_per_task", "worker CPU per task", "ms", False, stats.AMOUNT),
    Figure("broker_cpu_ms_per_task", "broker CPU per task", "ms", False, stats.AMOUNT),
    Figure("redis_commands_per_task", "Redis commands per task", "cmds", False, stats.COUNT),
    Figure("worker_peak_rss_mb", "worker peak RSS", "MB", False, stats.AMOUNT),
    Figure("worker_rss_per_process_mb", "worker peak RSS per process", "MB", False, stats.AMOUNT),
    Figure("broker_ceiling_ops", "broker ceiling (raw LPUSH)", "ops/s", True, stats.LEVEL),
    Figure("ceiling_fraction", "throughput / broker ceiling", "ratio", True, stats.LEVEL),
    Figure("disturbance_pct", "CPU used by other processes", "% of machine", False, stats.AMOUNT),
)
BY_KEY = {f.key: f for f in FIGURES}


def values(runs: Sequence[dict[str, Any]], key: str) -> list[float] | None:
    """One figure's per-run values in run order; None when any run lacks it (e.g. no latency phase)."""
    out = [r["figures"].get(key) for r in runs]
    return None if not out or any(v is None for v in out) else [float(v) for v in out]


def compare_runs(
    a_runs: Sequence[dict[str, Any]], b_runs: Sequence[dict[str, Any]], *, paired: bool, alpha: float
) -> dict[str, dict[str, Any]]:
    """Per figure: the comparison of B against A (paired: index i of each list is round i)."""
    out: dict[str, dict[str, Any]] = {}
    for fig in FIGURES:
        a, b = values(a_runs, fig.key), values(b_runs, fig.key)
        if a is None or b is None:
            continue
        cmp = stats.compare(a, b, higher_is_better=fig.higher_is_better, words=fig.words, paired=paired, alpha=alpha)
        out[fig.key] = {"label": fig.label, "unit": fig.unit, "higher_is_better": fig.higher_is_better, **cmp.as_dict()}
    return out
