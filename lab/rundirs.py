"""Run directories: every command's outputs and logs go under ``results/`` (or ``$LAB_RESULTS_DIR``).

Tests set ``LAB_RESULTS_DIR`` to a temporary directory so they never write into the checkout's ``results/``.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from lab.profiles import ROOT

RESULTS_ENV = "LAB_RESULTS_DIR"


def results_dir() -> Path:
    """Read when used, not at import: a test (or a CI step) may point it elsewhere before running a command."""
    return Path(os.environ.get(RESULTS_ENV) or ROOT / "results")


def run_dir_for(kind: str) -> Path:
    """A new, not yet existing ``results/<kind>-<UTC timestamp>[-n]``."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    base = results_dir()
    path = base / f"{kind}-{stamp}"
    n = 1
    while path.exists():
        n += 1
        path = base / f"{kind}-{stamp}-{n}"
    return path
