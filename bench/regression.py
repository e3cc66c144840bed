"""``lab bench compare --fail-on-regression PCT``: which speed figures got significantly worse by more than
PCT (pyperf ``compare_to``'s idea: a slowdown only counts when it is significant). Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# The figures a user feels as speed; resource figures (CPU, RSS, commands) are reported, not gated.
GATED = ("throughput", "e2e_p50_ms", "e2e_p95_ms")


@dataclass(frozen=True)
class Check:
    figure: str
    regressed: bool
    message: str  # what was measured against what was allowed


def worse_by_pct(fig: Mapping[str, Any]) -> float | None:
    """How much worse B is than A, in percent of A (negative: better); None when there is no ratio."""
    ratio = fig.get("ratio")
    if ratio is None or ratio <= 0:
        return None
    return (1 / ratio - 1) * 100 if fig["higher_is_better"] else (ratio - 1) * 100


def regression_checks(figures: Mapping[str, Mapping[str, Any]], pct: float | None) -> list[Check]:
    """One check per gated figure; ``pct`` None: report the verdicts, gate nothing."""
    checks = []
    for key in GATED:
        fig = figures.get(key)
        if fig is None:
            continue
        worse = worse_by_pct(fig)
        shown = "no ratio" if worse is None else f"{worse:+.1f}%"
        regressed = pct is not None and bool(fig["significant"]) and worse is not None and worse > pct
        if pct is None:
            message = f"{fig['label']}: {fig['verdict']} ({shown} worse)"
        elif regressed:
            message = f"{fig['label']}: {fig['verdict']} ({shown} worse, allowed {pct:g}%; p={fig['p_value']:.3g})"
        elif fig["significant"]:
            message = f"{fig['label']}: {fig['verdict']} ({shown}, within the allowed {pct:g}%)"
        else:
            message = f"{fig['label']}: Not significant ({shown})"
        checks.append(Check(key, regressed, message))
    return checks
