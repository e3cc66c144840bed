"""Small, pure statistics helpers shared by the demo, load summaries, chaos and bench."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100), like numpy's default; None for no data."""
    if not values:
        return None
    if not 0 <= q <= 100:
        raise ValueError("q must be within 0..100")
    data = sorted(values)
    pos = (len(data) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def summarize_ms(seconds: Sequence[float]) -> dict[str, float | None]:
    """p50/p95/p99 of durations given in seconds, reported in milliseconds."""
    out: dict[str, float | None] = {}
    for q in (50, 95, 99):
        v = percentile(seconds, q)
        out[f"p{q}"] = None if v is None else round(v * 1000, 2)
    return out
