"""The machine and software a measurement was taken on, recorded beside its figures (bench runs, the
reliability matrix): what a reader needs to judge a number from a shared 2-core box."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from lab.procs import require_binary


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def environment() -> dict[str, Any]:
    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "?"

    redis_version = "?"
    with contextlib.suppress(Exception):
        out = subprocess.run(
            [require_binary("redis-server", "redis-server"), "--version"], capture_output=True, text=True, timeout=10
        ).stdout
        redis_version = next((w.split("=", 1)[1] for w in out.split() if w.startswith("v=")), "?")
    freq = psutil.cpu_freq()
    cpu_model = "?"
    with contextlib.suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu_model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "?")
    return {
        "machine": {
            "hostname": platform.node(),
            "cpus": psutil.cpu_count(),
            "cpu_model": cpu_model,
            "cpu_mhz": round(freq.current) if freq else None,
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "kernel": platform.release(),
        },
        "versions": {
            "python": platform.python_version(),
            "celery": version("celery"),
            "kombu": version("kombu"),
            "redis-py": version("redis"),
            "redis-server": redis_version,
        },
    }
