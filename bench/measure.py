"""Measuring a run from the outside: CPU of process trees from /proc, the broker's own counters, the machine's
busy time (so a disturbed run can be flagged), peak memory, redis-benchmark's ceiling, and the environment a
bench document records."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psutil
import redis

from lab.errors import StackError
from lab.procs import require_binary
from lab.stack import Stack

CEILING_DB = 9
# Commands the harness itself sends while measuring; not part of a task's cost.
HARNESS_COMMANDS = {"info", "dbsize", "exists", "ping", "client|setinfo", "hello"}
CEILING_REQUESTS = 10000
CEILING_CLIENTS = 8


def process_tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _cpu_seconds(procs: Iterable[psutil.Process]) -> dict[int, float]:
    out = {}
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
    return out


def _delta(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(v - before.get(pid, 0.0) for pid, v in after.items())


def _machine_busy() -> float:
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)


def peak_rss_mb(procs: Iterable[psutil.Process]) -> float:
    """Sum of the kernel's per-process high-water marks (VmHWM): exact peaks, no sampling."""
    total_kb = 0
    for p in procs:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total_kb += int(line.split()[1])
    return total_kb / 1024


def _commandstats(client: redis.Redis) -> dict[str, int]:
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in client.info("commandstats").items()}


def _redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


class Window:
    """CPU and Redis counters between two instants; ``disturbance`` is everyone else's share of the machine."""

    def __init__(self, stack: Stack, broker: redis.Redis) -> None:
        self.stack, self.broker = stack, broker

    def _workers(self) -> list[psutil.Process]:
        return [p for pid in self.stack.worker_pids().values() for p in process_tree(pid)]

    def start(self) -> Window:
        self.t0 = time.monotonic()
        self.cmds0 = _commandstats(self.broker)
        self.redis0 = _redis_cpu(self.broker)
        self.workers0 = _cpu_seconds(self._workers())
        self.ours0 = _cpu_seconds(process_tree(os.getpid()))
        self.machine0 = _machine_busy()
        return self

    def stop(self) -> dict[str, Any]:
        machine = _machine_busy() - self.machine0
        ours = _delta(self.ours0, _cpu_seconds(process_tree(os.getpid())))
        wall = time.monotonic() - self.t0
        cmds1 = _commandstats(self.broker)
        commands = {k: v - self.cmds0.get(k, 0) for k, v in cmds1.items() if k not in HARNESS_COMMANDS}
        return {
            "wall_s": wall,
            "worker_cpu_s": _delta(self.workers0, _cpu_seconds(self._workers())),
            "broker_cpu_s": _redis_cpu(self.broker) - self.redis0,
            "commands": {k: v for k, v in sorted(commands.items()) if v > 0},
            "other_cpu_s": max(machine - ours, 0.0),
            "disturbance_pct": max(machine - ours, 0.0) / (wall * (psutil.cpu_count() or 1)) * 100,
        }


def broker_ceiling(port: int) -> float:
    """redis-benchmark's LPUSH ops/s against this redis-server (its own db, emptied afterwards)."""
    binary = require_binary("redis-benchmark", "redis-tools")
    argv = [binary, "-h", "127.0.0.1", "-p", str(port), "-t", "lpush", "-n", str(CEILING_REQUESTS)]
    argv += ["-c", str(CEILING_CLIENTS), "--dbnum", str(CEILING_DB), "--csv"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    rows = [r for r in csv.reader(io.StringIO(proc.stdout)) if r and r[0] == "LPUSH"]
    if proc.returncode != 0 or not rows:
        raise StackError(f"redis-benchmark failed (exit {proc.returncode}): {proc.stderr.strip()[:300]}")
    client = redis.Redis(port=port, db=CEILING_DB)
    client.flushdb()
    client.close()
    return float(rows[0][1])
