"""From Locust's final JSON and the drained tasks to ``summary.json``: totals, percentiles, SLO verdicts.

Pure functions (no locust, no I/O), so the arithmetic and the threshold verdicts are unit-tested.

- Request totals, ``rps`` and ``http_latency_ms`` count the client's own calls: HTTP requests, and ENQUEUE
  for users that publish straight to the broker. TASK/QUEUE events (task latencies reported by the users)
  are kept apart in ``by_request``.
- ``tasks`` and ``task_latency_ms`` come from every task the load dispatched, followed to its end after the
  run (the drain), from the tasks' own timestamps; not only from the tasks users happened to poll to the end.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from celery import states

from lab.stats import summarize_ms
from loadtests.common.config import THRESHOLDS
from loadtests.common.metrics import QUEUE, TASK

FINAL_OK = states.SUCCESS
FINAL_BAD = states.READY_STATES - {states.SUCCESS}


@dataclass
class TaskRecord:
    flow: str
    status: str
    timeline: dict[str, Any] | None

    @property
    def final(self) -> bool:
        return self.status == FINAL_OK or self.status in FINAL_BAD


def _samples_s(entries: Iterable[Mapping[str, Any]]) -> list[float]:
    """Locust's response-time histogram ({ms: count}) as a list of seconds, for ``summarize_ms``."""
    out: list[float] = []
    for e in entries:
        for ms, count in (e.get("response_times") or {}).items():
            out.extend([float(ms) / 1000] * int(count))
    return out


def is_client_call(entry: Mapping[str, Any]) -> bool:
    return entry["method"] not in (TASK, QUEUE)


def request_totals(entries: list[dict[str, Any]]) -> dict[str, Any]:
    calls = [e for e in entries if is_client_call(e)]
    requests = sum(e["num_requests"] for e in calls)
    failures = sum(e["num_failures"] for e in calls)
    seconds = {int(ts) for e in calls for ts, n in (e.get("num_reqs_per_sec") or {}).items() if n}
    duration = (max(seconds) - min(seconds) + 1) if seconds else 0
    return {
        "requests": requests,
        "failures": failures,
        "failure_ratio": round(failures / requests, 6) if requests else None,
        "duration_s": float(duration),
        "rps": round(requests / duration, 2) if duration else 0.0,
        "http_latency_ms": summarize_ms(_samples_s(calls)),
    }


def by_request(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for e in sorted(entries, key=lambda e: (e["method"] in (TASK, QUEUE), e["method"], e["name"])):
        rows.append(
            {
                "type": e["method"],
                "name": e["name"],
                "requests": e["num_requests"],
                "failures": e["num_failures"],
                **summarize_ms(_samples_s([e])),
            }
        )
    return rows


def _spans(records: Iterable[TaskRecord], start: str, end: str) -> list[float]:
    tls = [r.timeline for r in records if r.final and r.timeline]
    return [t[end] - t[start] for t in tls if t.get(start) and t.get(end)]


def task_totals(records: Mapping[str, TaskRecord]) -> dict[str, Any]:
    states = Counter(r.status for r in records.values())
    flows: dict[str, list[TaskRecord]] = defaultdict(list)
    for r in records.values():
        flows[r.flow].append(r)
    per_flow = {}
    for flow, rows in sorted(flows.items()):
        per_flow[flow] = {
            "sent": len(rows),
            "succeeded": sum(r.status == FINAL_OK for r in rows),
            "failed": sum(r.status in FINAL_BAD for r in rows),
            "end_to_end_ms": summarize_ms(_spans(rows, "sent", "finished")),
        }
    return {
        "tasks": {
            "sent": len(records),
            "succeeded": states.get(FINAL_OK, 0),
            "failed": sum(states.get(s, 0) for s in FINAL_BAD),
            "retried": sum(1 for r in records.values() if r.timeline and r.timeline.get("attempt", 1) > 1),
            "unfinished": sum(1 for r in records.values() if not r.final),
            "by_state": dict(states),
        },
        "task_latency_ms": summarize_ms(_spans(records.values(), "sent", "finished")),
        "queue_wait_ms": summarize_ms(_spans(records.values(), "sent", "started")),
        "by_flow": per_flow,
    }


def _fmt(value: float) -> str:
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.6g}" if abs(value) >= 1 else f"{value:.4g}"


def check_thresholds(limits: Mapping[str, float], values: Mapping[str, float | None]) -> list[dict[str, Any]]:
    """One verdict per threshold: {name, limit, value, ok, op, message}; no data for a value fails it."""
    out = []
    for name, limit in limits.items():
        op, unit = THRESHOLDS.get(name, ("<=", ""))
        value = values.get(name)
        if value is None:
            ok, msg = False, f"{name}: no data to compare with the limit {_fmt(limit)}{unit}"
        else:
            ok = value <= limit if op == "<=" else value >= limit
            over = abs(value - limit)
            rel = f", {over / limit * 100:.0f} %" if limit else ""
            word = "above the maximum" if op == "<=" else "below the minimum"
            msg = (
                f"{name}: {_fmt(value)}{unit} (limit {op} {_fmt(limit)}{unit})"
                if ok
                else f"{name}: {_fmt(value)}{unit} is {_fmt(over)}{unit}{rel} {word} {_fmt(limit)}{unit}"
            )
        out.append({"name": name, "limit": limit, "value": value, "ok": ok, "op": op, "message": msg})
    return out


def threshold_values(
    totals: Mapping[str, Any], tasks: Mapping[str, Any], held: int | None = None
) -> dict[str, float | None]:
    """``held``: unfinished tasks the broker still holds (drain = "broker"), None when not looked up."""
    t = tasks["tasks"]
    done = t["succeeded"] + t["failed"]
    return {
        "max_failure_ratio": totals["failure_ratio"],
        "p95_http_ms": totals["http_latency_ms"]["p95"],
        "p95_task_ms": tasks["task_latency_ms"]["p95"],
        "min_rps": totals["rps"],
        "max_task_failure_ratio": round(t["failed"] / done, 6) if done else None,
        "max_unfinished_tasks": t["unfinished"],
        "max_unaccounted_tasks": None if held is None else t["unfinished"] - held,
    }


def build(
    *,
    scenario: Any,
    config: str,
    entries: list[dict[str, Any]],
    records: Mapping[str, TaskRecord],
    extra: Mapping[str, Any] | None = None,
    held: int | None = None,
) -> dict[str, Any]:
    """``held``: with drain = "broker", how many unfinished tasks the broker still holds."""
    totals = request_totals(entries)
    tasks = task_totals(records)
    values = threshold_values(totals, tasks, held)
    # Every dispatched task must end: a task still unfinished after the drain fails the run whatever the SLOs.
    # A scenario that builds a backlog on purpose (drain = "broker") needs each one ended or held by the broker.
    always = {"max_unfinished_tasks": 0} if held is None else {"max_unaccounted_tasks": 0}
    limits = {**always, **scenario.thresholds}
    verdicts = check_thresholds(limits, values)
    summary: dict[str, Any] = {
        "scenario": scenario.name,
        "config": config,
        "shape": scenario.shape,
        "users": scenario.users,
        "duration_s": totals["duration_s"],
        "planned_duration_s": scenario.duration_s,
        "requests": totals["requests"],
        "failures": totals["failures"],
        "failure_ratio": totals["failure_ratio"],
        "rps": totals["rps"],
        "dispatch_rps": round(tasks["tasks"]["sent"] / totals["duration_s"], 2) if totals["duration_s"] else 0.0,
        "http_latency_ms": totals["http_latency_ms"],
        "task_latency_ms": tasks["task_latency_ms"],
        "queue_wait_ms": tasks["queue_wait_ms"],
        "tasks": {**tasks["tasks"], **({} if held is None else {"held_by_broker": held})},
        "by_flow": tasks["by_flow"],
        "by_request": by_request(entries),
        "thresholds": verdicts,
        "passed": all(v["ok"] for v in verdicts),
    }
    summary.update(extra or {})
    return summary
