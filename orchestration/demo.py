"""``lab demo``: the reference system doing all of its jobs once, with real failures to retry through.

It starts a Stack, makes the SMTP sink refuse the first deliveries and the AI stub fail its first calls (so
the retry paths run for real), pushes a burst of every task type through the API, follows every task to its
final state through the status endpoint, and summarises from the tasks' own timestamps.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from celery import states
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from app.core.celery import create_celery_app
from app.core.timeline import read_timeline
from audit.checks import audit
from audit.checks import summary as summary_of
from chaos.runner import demo_section as chaos_demo_section
from dashboards.check import demo_section as metrics_section
from dashboards.report import render_report
from lab.profiles import resolve
from lab.stack import Stack, StackConfig
from lab.stats import summarize_ms
from loadtests.runner import demo_section as load_section

FINAL = states.READY_STATES
# The guide's retry delays are 60 s and 30 s; the demo shortens them so its retries finish in seconds.
DEMO_OVERRIDES = {
    "CELERY_TASK_DEFAULT_RETRY_DELAY": "1",
    "AI_RETRY_COUNTDOWN": "1",
    "EXPORT_STEP_DELAY_S": "0.3",
}
REFUSED_EMAILS = 2
FAILED_AI_CALLS = 2
DEADLINE_S = 90.0


@dataclass
class Tracked:
    kind: str
    task_id: str
    expected: str = "SUCCESS"
    status: str = "PENDING"
    saw_progress: bool = False
    body: dict[str, Any] | None = None


def _post(client: httpx.Client, path: str, **kw: Any) -> dict[str, Any]:
    resp = client.post(path, **kw)
    if resp.status_code >= 400:
        raise RuntimeError(f"POST {path} answered {resp.status_code}: {resp.text[:300]}")
    return resp.json()


def push_burst(client: httpx.Client, users: int) -> list[Tracked]:
    tracked: list[Tracked] = []
    user_ids = []
    stamp = int(time.time() * 1000)
    for i in range(users):
        body = _post(client, "/api/v1/users", json={"email": f"user{i}.{stamp}@example.com", "name": f"User {i}"})
        user_ids.append(body["id"])
        tracked.append(Tracked("welcome_email", body["welcome_task_id"]))
    for i, uid in enumerate(user_ids):
        body = _post(client, "/api/v1/ai/completions", json={"prompt": f"Summarise ticket {i} for me", "user_id": uid})
        tracked.append(Tracked("ai_completion", body["task_id"]))
    for i, uid in enumerate(user_ids[:4]):
        fmt = "json" if i % 2 == 0 else "csv"
        body = _post(client, f"/api/v1/users/{uid}/export", params={"format": fmt})
        tracked.append(Tracked(f"export_{fmt}", body["task_id"]))
    body = _post(client, "/api/v1/workflows/chain", json={"user_id": user_ids[0]})
    tracked.append(Tracked("chain", body["task_id"]))
    body = _post(
        client,
        "/api/v1/workflows/group",
        json={"user_ids": user_ids[: min(5, users)], "subject": "Hello", "body": "A group notification"},
    )
    tracked.append(Tracked("group", body["task_id"]))
    body = _post(client, "/api/v1/workflows/chord", json={"items": list(range(1, 21))})
    tracked.append(Tracked("chord", body["task_id"]))
    return tracked


def follow(client: httpx.Client, tracked: list[Tracked], console: Console, deadline_s: float) -> None:
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task("tasks finished", total=len(tracked))
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            pending = [t for t in tracked if t.status not in FINAL]
            if not pending:
                break
            for t in pending:
                body = client.get(f"/api/v1/tasks/{t.task_id}").json()
                t.status, t.body = body["status"], body
                t.saw_progress |= t.status == "PROGRESS"
            done = sum(t.status in FINAL for t in tracked)
            retrying = sum(t.status == "RETRY" for t in tracked)
            progress.update(bar, completed=done, description=f"tasks finished ({retrying} retrying)")
            time.sleep(0.2)


def summarize(stack: Stack, tracked: list[Tracked], elapsed: float) -> dict[str, Any]:
    cache = stack.redis(2)
    ids = {t.task_id for t in tracked}
    for t in tracked:
        ids.update(c["task_id"] for c in (t.body or {}).get("children") or [])
    timelines = {i: tl for i in ids if (tl := read_timeline(i, cache))}
    by_name: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for tl in timelines.values():
        by_name[tl["name"].rsplit(".", 1)[-1]].append(tl)
    latency = {}
    for name, rows in sorted(by_name.items()):
        e2e = [r["finished"] - r["sent"] for r in rows if r.get("sent") and r.get("finished")]
        wait = [r["started"] - r["sent"] for r in rows if r.get("sent") and r.get("started")]
        latency[name] = {
            "count": len(rows),
            "end_to_end_ms": summarize_ms(e2e),
            "queue_wait_ms": summarize_ms(wait),
            "retries": sum(r["attempt"] - 1 for r in rows),
        }
    sink = stack.sink.stats()
    exports = [t for t in tracked if t.kind.startswith("export_")]
    written = [
        t
        for t in exports
        if t.status == "SUCCESS"
        and (name := ((t.body or {}).get("result") or {}).get("file"))
        and (Path(stack.settings.export_dir) / name).is_file()
    ]
    wrong = [
        {"kind": t.kind, "task_id": t.task_id, "status": t.status, "expected": t.expected}
        for t in tracked
        if t.status != t.expected
    ]
    return {
        "passed": not wrong and len(written) == len(exports),
        "profile": stack.config.profile,
        "overrides": DEMO_OVERRIDES,
        "run_dir": str(stack.run_dir),
        "duration_s": round(elapsed, 2),
        "tasks": {
            "tracked": len(tracked),
            "by_state": dict(Counter(t.status for t in tracked)),
            "wrong_final_state": wrong,
            "timelines": len(timelines),
        },
        "retries": sum(v["retries"] for v in latency.values()),
        "latency": latency,
        "emails": {"delivered": sink["delivered"], "refused": sink["refused"]},
        "exports": {
            "requested": len(exports),
            "written": len(written),
            "progress_seen": sum(t.saw_progress for t in exports),
        },
        "workflows": {t.kind: (t.body or {}).get("result") for t in tracked if t.kind in {"chain", "chord"}},
    }


def print_summary(summary: dict[str, Any], console: Console) -> None:
    table = Table(title="latency per task type (from the tasks' own timestamps)")
    for col in ("task", "count", "retries", "e2e p50 ms", "e2e p95 ms", "queue wait p95 ms"):
        table.add_column(col, justify="right" if col != "task" else "left")
    for name, row in summary["latency"].items():
        e2e, wait = row["end_to_end_ms"], row["queue_wait_ms"]
        table.add_row(name, str(row["count"]), str(row["retries"]), str(e2e["p50"]), str(e2e["p95"]), str(wait["p95"]))
    console.print(table)
    t = summary["tasks"]
    console.print(f"final states: {t['by_state']}  (tracked {t['tracked']}, retries {summary['retries']})")
    console.print(
        f"emails delivered {summary['emails']['delivered']} (refused then retried: {summary['emails']['refused']}); "
        f"exports written {summary['exports']['written']}/{summary['exports']['requested']} "
        f"(PROGRESS seen for {summary['exports']['progress_seen']})"
    )
    console.print(f"workflows: {summary['workflows']}")
    verdict = "[green]all as expected[/]" if summary["passed"] else f"[red]wrong[/] {t['wrong_final_state']}"
    console.print(f"tasks: {verdict} in {summary['duration_s']}s")


Section = Callable[[Stack, Console], dict[str, Any]]


def sections() -> list[tuple[str, Section]]:
    """What the demo shows after its burst, each on the same running Stack. A section's dict may carry
    ``passed``; one without it (e.g. ``skipped``) does not fail the demo."""
    # Load first: its seconds of steady traffic are what the metrics check then finds on every panel.
    return [("load", load_section), ("metrics", metrics_section)]


def chaos_section(console: Console) -> dict[str, Any]:
    """One worker-kill experiment on a Stack of its own (it kills a worker): the journal, with ``passed``."""
    journal = chaos_demo_section(None, console)
    return {**journal, "passed": journal["verdict"] == "pass"}


def audit_section(profile: str, console: Console) -> dict[str, Any]:
    """``lab audit`` on the reference app as this profile configures it. It gates the demo for the reference
    profile only: the other profiles (early-ack, brpop-fetch...) exist to show a hazard."""
    app = create_celery_app(resolve(profile, {}, {}), set_as_current=False)
    findings = audit(app)
    counts = summary_of(findings)
    for f in findings:
        if f.status != "pass":
            console.print(f"  {f.status}: {f.id}: {f.found}", highlight=False)
    console.print(f"audit: {counts['pass']} pass, {counts['warn']} warn, {counts['fail']} fail", highlight=False)
    gate = counts["fail"] == 0 if profile == "reference" else None
    return {"findings": [f.as_dict() for f in findings], "summary": counts, "passed": gate}


def run_demo(*, run_dir: Path, profile: str, users: int, console: Console) -> dict[str, Any]:
    console.print(f"starting the stack (profile {profile}) in {run_dir} ...")
    prometheus = shutil.which("prometheus") is not None
    cfg = StackConfig(
        run_dir=run_dir,
        profile=profile,
        workers=2,
        beat=True,
        prometheus=prometheus,
        overrides=dict(DEMO_OVERRIDES),
    )
    on_stack = sections()
    with Stack(cfg) as stack:
        console.print(f"stack up: API {stack.urls['api']}, workers {stack.worker_pids()}")
        stack.sink_refuse(REFUSED_EMAILS)
        stack.ai_control(fail_next=FAILED_AI_CALLS)
        t0 = time.monotonic()
        with httpx.Client(base_url=stack.urls["api"], timeout=30) as client:
            tracked = push_burst(client, users)
            console.print(f"pushed {len(tracked)} tasks and workflows through the API")
            follow(client, tracked, console, DEADLINE_S)
        summary = summarize(stack, tracked, time.monotonic() - t0)
        print_summary(summary, console)
        for name, section in on_stack:
            console.rule(name)
            summary[name] = section(stack, console)
    if prometheus:
        summary["report"] = str(render_report(run_dir))
        console.print(f"report (overview panels as PNG over this run): {summary['report']}")
    console.rule("chaos")
    summary["chaos"] = chaos_section(console)
    console.rule("audit")
    summary["audit"] = audit_section(profile, console)
    failed = [n for n in [*(n for n, _ in on_stack), "chaos", "audit"] if summary[n].get("passed") is False]
    summary["passed"] = summary["passed"] and not failed
    verdict = "[green]PASS[/]" if summary["passed"] else f"[red]FAIL[/] (failed: {', '.join(failed) or 'tasks'})"
    console.print(f"demo: {verdict}")
    return summary
