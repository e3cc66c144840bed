"""How fast the API dispatches: ``python -m loadtests.bench`` (numbers for docs/benchmarks.md).

For each API dispatch mode (Settings ``API_DISPATCH_MODE``): one Stack with the reference profile, then the
``dispatch`` scenario (AI completions, not followed, no think time) at increasing user counts. The highest
request rate with a failure ratio under 1 % is the sustained dispatch rate; then a run paced at half that
rate (``constant_throughput``) gives the p99 HTTP latency there. Every point is a full ``run_scenario``:
its summary.json sits under the output directory.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console

from lab.profiles import ROOT
from lab.stack import Stack
from loadtests.common.config import get_scenario
from loadtests.runner import run_scenario, stack_config

MAX_FAILURE_RATIO = 0.01
HALF_RATE_USERS = 8


def machine() -> str:
    freq = psutil.cpu_freq()
    return (
        f"{platform.node()}: {psutil.cpu_count()} CPUs ({platform.processor() or platform.machine()}"
        + (f", {freq.max or freq.current:.0f} MHz" if freq else "")
        + f"), {psutil.virtual_memory().total / 2**30:.1f} GiB RAM, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def point(summary: dict[str, Any], users: int) -> dict[str, Any]:
    return {
        "users": users,
        "rps": summary["rps"],
        "failure_ratio": summary["failure_ratio"],
        "http_latency_ms": summary["http_latency_ms"],
        "tasks_sent": summary["tasks"]["sent"],
        "loadgen_cpu_percent": summary["loadgen_cpu_percent"],
        "summary": summary["files"]["summary"],
    }


def bench_mode(mode: str, users: list[int], duration_s: float, out: Path, console: Console) -> dict[str, Any]:
    base = get_scenario("dispatch")
    sc = dataclasses.replace(base, overrides={**base.overrides, "API_DISPATCH_MODE": mode})
    sweep = []
    with Stack(stack_config(sc, out / mode / "stack")) as stack:
        for n in users:
            run = sc.with_overrides(users=n, duration_s=duration_s)
            run = dataclasses.replace(run, spawn_rate=float(max(n, 1)))
            summary = run_scenario(run, run_dir=out / mode / f"users-{n}", console=console, stack=stack)
            sweep.append(point(summary, n))
        ok = [p for p in sweep if p["failure_ratio"] is not None and p["failure_ratio"] < MAX_FAILURE_RATIO]
        best = max(ok, key=lambda p: p["rps"]) if ok else None
        half = None
        if best:
            per_user = best["rps"] / 2 / HALF_RATE_USERS
            run = sc.with_overrides(users=HALF_RATE_USERS, duration_s=duration_s)
            run = dataclasses.replace(
                run, wait=f"constant_throughput:{per_user:.3f}", spawn_rate=float(HALF_RATE_USERS)
            )
            summary = run_scenario(run, run_dir=out / mode / "half-rate", console=console, stack=stack)
            half = point(summary, HALF_RATE_USERS) | {"target_rps": round(best["rps"] / 2, 1)}
    return {"mode": mode, "sweep": sweep, "sustained": best, "half_rate": half}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default="executor,inline")
    parser.add_argument("--users", default="1,2,4,8,16,32")
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    out = args.out or ROOT / "results" / f"bench-dispatch-{datetime.now(UTC):%Y%m%dT%H%M%S}"
    console = Console(stderr=True)
    users = [int(u) for u in args.users.split(",")]
    result = {
        "command": "python -m loadtests.bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "load_average_at_start": os.getloadavg(),
        "modes": [bench_mode(m, users, args.duration, out, console) for m in args.modes.split(",")],
    }
    result["load_average_at_end"] = os.getloadavg()
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(result, indent=2))
    for m in result["modes"]:
        console.print(f"[bold]{m['mode']}[/]")
        for p in m["sweep"]:
            h = p["http_latency_ms"]
            console.print(
                f"  {p['users']:3d} users: {p['rps']:7.1f} req/s, failures {p['failure_ratio']}, "
                f"p50/p95/p99 {h['p50']}/{h['p95']}/{h['p99']} ms, locust CPU {p['loadgen_cpu_percent']} %"
            )
        console.print(f"  sustained: {m['sustained'] and m['sustained']['rps']} req/s; half rate: {m['half_rate']}")
    console.print(f"written: {out / 'bench.json'}")


if __name__ == "__main__":
    main()
