"""Load shapes as pure functions of elapsed time: how many users, at which spawn rate, or None when done.

The locustfile's one ``LoadTestShape`` asks ``target()`` every second; keeping the arithmetic here lets it be
property-tested without Locust.
"""

from __future__ import annotations

import math
from collections.abc import Mapping


def target(
    shape: str,
    t: float,
    *,
    users: int,
    spawn_rate: float,
    duration_s: float,
    params: Mapping[str, float] | None = None,
) -> tuple[int, float] | None:
    """Users wanted ``t`` seconds into the run; None once ``duration_s`` has passed."""
    p = params or {}
    if t >= duration_s or t < 0:
        return None
    if shape == "steady":
        return users, spawn_rate
    if shape == "step":
        steps = max(1, int(p.get("steps", 4)))
        k = min(int(t // (duration_s / steps)) + 1, steps)
        return max(1, round(users * k / steps)), spawn_rate
    if shape == "spike":
        start = duration_s * p.get("spike_at", 0.4)
        end = start + duration_s * p.get("spike_len", 0.2)
        if start <= t < end:
            return users, spawn_rate
        return max(1, round(users * p.get("baseline", 0.2))), spawn_rate
    if shape == "soak":
        ramp = duration_s * p.get("ramp", 0.05)
        if ramp > 0 and t < ramp:
            return max(1, min(users, math.ceil(users * t / ramp))), spawn_rate
        return users, spawn_rate
    raise ValueError(f"unknown shape {shape!r}")
