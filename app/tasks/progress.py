"""Pure progress arithmetic, kept apart from the task so it can be property-tested."""

from __future__ import annotations

from typing import TypedDict


class Progress(TypedDict):
    current: int
    total: int
    percent: int
    message: str


def progress(step: int, total: int, message: str) -> Progress:
    if total <= 0:
        raise ValueError("total must be positive")
    step = min(max(step, 0), total)
    return {"current": step, "total": total, "percent": (step * 100) // total, "message": message}
