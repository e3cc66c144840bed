"""The regression gate: only a significant change worse than the allowance fails, in either direction of
"better"."""

from __future__ import annotations

from bench.regression import regression_checks, worse_by_pct


def fig(ratio: float | None, significant: bool, higher_is_better: bool, label: str = "x") -> dict:
    verdict = "Not significant" if not significant else f"{ratio}x"
    return {"label": label, "ratio": ratio, "significant": significant, "higher_is_better": higher_is_better,
            "verdict": verdict, "p_value": 0.001 if significant else 0.5}  # fmt: skip


def test_worse_is_measured_the_right_way_round() -> None:
    assert round(worse_by_pct(fig(0.8, True, True)), 1) == 25.0  # throughput 0.8x: 25 % worse
    assert round(worse_by_pct(fig(1.1, True, False)), 1) == 10.0  # latency 1.1x: 10 % worse
    assert worse_by_pct(fig(1.25, True, True)) < 0  # faster is not worse
    assert worse_by_pct(fig(None, True, True)) is None


def test_only_significant_changes_beyond_the_allowance_fail() -> None:
    figures = {
        "throughput": fig(0.8, True, True, "throughput"),
        "e2e_p50_ms": fig(1.03, True, False, "p50"),
        "e2e_p95_ms": fig(2.0, False, False, "p95"),
        "worker_peak_rss_mb": fig(3.0, True, False),  # not gated
    }
    checks = {c.figure: c for c in regression_checks(figures, 5)}
    assert set(checks) == {"throughput", "e2e_p50_ms", "e2e_p95_ms"}
    assert checks["throughput"].regressed and "allowed 5%" in checks["throughput"].message
    assert not checks["e2e_p50_ms"].regressed and "within" in checks["e2e_p50_ms"].message
    assert not checks["e2e_p95_ms"].regressed and "Not significant" in checks["e2e_p95_ms"].message
