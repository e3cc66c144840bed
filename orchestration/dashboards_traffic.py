"""The traffic ``lab dashboards check`` drives before it evaluates anything: it combines the uses.

Real work through every path the dashboards show, on a Stack started with the exporter (serving a chaos
ledger), Prometheus and Flower: sign-ups through the API (one SMTP refusal forces a retry), probe tasks that
succeed, fail, or wait for a countdown, one SIGKILLed pool child mid-task and one announced fault; then a
small chaos experiment (chaos/experiments/dashboards-check.json) whose loss ledger the exporter serves
(``celery_lab_ledger_*``), and a short Locust load that the Stack's Prometheus scrapes as job "locust", so the
"Load test" and "Chaos" dashboards have data of their own. The evaluation itself is dashboards/check.py.
"""

from __future__ import annotations

import io
import json
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
from celery import states
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from chaos.experiment import load_experiment
from chaos.runner import run_on_stack, stack_extras
from dashboards.check import (
    Item,
    check_stack,
    collect_items,
    evaluate,
    promtool_check_metrics,
    succeeded_agrees,
    wait_caught_up,
)
from lab.errors import StackError
from lab.exporter import emit_fault
from lab.ledger import Ledger, LedgerServer
from lab.probes import WORK_TASK
from lab.procs import wait_until
from lab.prometheus import PromClient
from lab.stack import Stack, StackConfig
from loadtests.common.config import get_scenario
from loadtests.runner import STARTUP_ALLOWANCE_S, LocustRun, run_scenario

CHECK_OVERRIDES = {
    "CELERY_TASK_DEFAULT_RETRY_DELAY": "0.2",
    "AI_RETRY_COUNTDOWN": "0.2",
    "CELERY_WORKER_CONCURRENCY": "2",
}
# The Locust load the check drives for the "Load test" dashboard: long enough for Prometheus (1 s scrapes) to
# see every Locust series rise between two scrapes, short enough for the CI budget.
LOAD_SCENARIO = "smoke"
LOAD_S = 8.0
LOAD_USERS = 3
# The chaos run the check drives for the "Chaos" dashboard's ledger panels and fault annotations: a handful of
# ledger probe tasks and one SIGKILLed pool child (acks_late + reject_on_worker_lost requeue its task at once,
# so it drains in seconds whatever the visibility timeout). An experiment file like the others.
CHAOS_EXPERIMENT = "dashboards-check"


def _signups(stack: Stack, n: int, tag: str) -> list[str]:
    stamp = int(time.time() * 1000)
    ids = []
    with httpx.Client(base_url=stack.urls["api"], timeout=30) as api:
        for i in range(n):
            resp = api.post("/api/v1/users", json={"email": f"check{i}.{tag}.{stamp}@example.com", "name": f"C{i}"})
            resp.raise_for_status()
            ids.append(resp.json()["welcome_task_id"])
        api.get("/api/v1/tasks/does-not-exist")
    return ids


def _probes(stack: Stack, n: int) -> list[str]:
    ids = []
    for i in range(n):
        options: dict[str, Any] = {"countdown": 1} if i % 7 == 3 else {}
        ids.append(stack.celery.send_task(WORK_TASK, kwargs={"duration_s": 0.3, "fail": i % 5 == 4}, **options).id)
    return ids


def _started_on(stack: Stack, hostname: str) -> float:
    text = httpx.get(f"{stack.urls['exporter']}/metrics", timeout=5).text
    return sum(
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == "celery_task_started_total" and s.labels.get("worker") == hostname
    )


def _finish(stack: Stack, ids: list[str]) -> None:
    wait_until(
        lambda: all(stack.celery.AsyncResult(i).state in states.READY_STATES for i in ids),
        timeout=120,
        what="every task of the check in a final state",
        interval=0.5,
    )


def drive_traffic(
    stack: Stack, tasks: int, prom: PromClient, baseline: float, console: Console | None = None
) -> dict[str, Any]:
    """Real work through every path the dashboards show, in two waves; returns what was sent.

    Prometheus must have scraped the first wave's end before the second starts: a counter's first sample is
    its starting point, so rates and increases see only what changes after it. Hence two waves.
    """
    say = console.print if console else (lambda *_a, **_k: None)
    stack.sink_refuse(1)  # the first welcome email is refused: one real retry
    first = _signups(stack, 2, "a") + _probes(stack, tasks // 2)
    _finish(stack, first)
    wave1 = succeeded_agrees(prom, stack, baseline)
    say(f"wave 1: {len(first)} tasks finished; Prometheus {wave1['prometheus_increase']:g} succeeded")

    # Kill a pool child mid-task (the chaos panels and the WorkerLost alert need a real loss): first fill
    # every pool slot with long probes, and kill only once the exporter saw both of w1's children start.
    name = next(iter(stack.workers))
    hostname = stack.workers[name].hostname
    slots = len(stack.workers) * stack.settings.celery_worker_concurrency
    before = _started_on(stack, hostname)
    long_ones = [stack.celery.send_task(WORK_TASK, kwargs={"duration_s": 4.0}).id for _ in range(slots)]
    wait_until(
        lambda: _started_on(stack, hostname) >= before + stack.settings.celery_worker_concurrency,
        timeout=60,
        what=f"every pool child of {name} running a probe",
        interval=0.2,
    )
    children = stack.pool_children(name)
    if children:
        os.kill(children[0], signal.SIGKILL)
        emit_fault(stack.celery, "kill_pool_child", name)
        say(f"SIGKILLed pool child {children[0]} of {name}")
    second = _signups(stack, 2, "b")
    probes = long_ones + _probes(stack, tasks - tasks // 2)
    _finish(stack, second + probes)
    seen = Counter(stack.celery.AsyncResult(i).state for i in first + second + probes)
    return {"tasks": len(first) + len(second) + len(probes), "states": dict(seen), "killed": children[:1]}


def drive_chaos(stack: Stack, ledger_url: str, console: Console | None = None) -> dict[str, Any]:
    """A small chaos experiment (chaos/experiments/dashboards-check.json) on the check's Stack, its ledger in
    ``ledger_url`` (which the exporter serves as ``celery_lab_ledger_*``); run_on_stack announces each fault
    to the exporter."""
    say = console.print if console else (lambda *_a, **_k: None)
    exp = load_experiment(CHAOS_EXPERIMENT)
    ledger = Ledger(ledger_url, run=f"check-{uuid.uuid4().hex[:8]}")
    try:
        journal = run_on_stack(exp, stack, ledger)
    finally:
        ledger.close()
    say(f"chaos run {ledger.run}: {journal['verdict']} ({journal['reason']}); ledger {journal['ledger']}")
    return {
        "run": ledger.run,
        "verdict": journal["verdict"],
        "reason": journal["reason"],
        "ledger": journal["ledger"],
        "faults": [{"kind": f["kind"], "target": f["target"]} for f in journal["faults"]],
    }


def locust_items(items: list[Item] | None = None) -> list[Item]:
    """The dashboard panel targets that read Locust's metrics."""
    return [i for i in (items or collect_items()) if i.kind == "panel" and "locust_" in i.expr]


def drive_load(
    stack: Stack, prom: PromClient, since: float, console: Console | None = None
) -> tuple[dict[str, Any], dict[str, tuple[bool, str]]]:
    """A short Locust load (``LOAD_SCENARIO``) against the Stack, scraped by its Prometheus as job "locust".

    Locust's endpoint lives only as long as its master, so while the load runs this waits (with deadlines)
    until Prometheus has scraped it and every panel reading Locust has data in the window from ``since``,
    then lints the endpoint with ``promtool check metrics``. Returns what the load did and that lint."""
    sc = get_scenario(LOAD_SCENARIO).with_overrides(duration_s=LOAD_S, users=LOAD_USERS)
    lint: dict[str, tuple[bool, str]] = {}
    seen: dict[str, Any] = {"scraped": False, "panels_with_data": False}

    def during(run: LocustRun) -> None:
        def scraped() -> bool:
            up = prom.query('up{job="locust"} == 1')
            return bool(up) and bool(prom.query('count({__name__=~"locust_.+", job="locust"})'))

        def panels_have_data() -> bool:
            return all(evaluate(prom, replace(i), (since, time.time())).status == "ok" for i in pending)

        pending = locust_items()
        limit = sc.duration_s + STARTUP_ALLOWANCE_S
        try:
            wait_until(scraped, timeout=limit, what='Prometheus scraping Locust (job="locust")', abort=run.master.died)
            seen["scraped"] = True
            wait_until(
                panels_have_data,
                timeout=limit,
                what="every Locust panel with data",
                abort=run.master.died,
                interval=0.5,
            )
            seen["panels_with_data"] = True
        except StackError as exc:
            seen["error"] = str(exc)  # the panels then fail the check as empty; the load itself still reports
        lint["locust"] = promtool_check_metrics(run.prometheus_url)

    out = console if console is not None else Console(file=io.StringIO())  # run_scenario always reports
    summary = run_scenario(sc, run_dir=stack.run_dir / "load-check", console=out, stack=stack, during_load=during)
    if "locust" not in lint:
        lint["locust"] = (False, "the load ended before its metrics endpoint could be linted")
    load = {
        "scenario": sc.name,
        "duration_s": sc.duration_s,
        "users": sc.users,
        "requests": summary["requests"],
        "failures": summary["failures"],
        "tasks": summary["tasks"],
        "slo_passed": summary["passed"],  # informational: the check is about the dashboards, not the SLO
        "metrics_url": summary["prometheus"]["url"],
        **seen,
    }
    return load, lint


def run_check(
    run_dir: Path,
    *,
    profile: str = "reference",
    tasks: int = 30,
    console: Console | None = None,
    extra_items: list[Item] | None = None,
    on_stack: Callable[[Stack], Any] | None = None,
) -> dict[str, Any]:
    """Start a chaos ledger and a Stack with the exporter (serving that ledger), Prometheus and Flower; drive
    traffic, a small chaos run and a short Locust load; check everything.

    ``extra_items`` are checked too (tests add known-bad expressions to prove the check can fail);
    ``on_stack(stack)`` runs on the live Stack at the end, its result under the summary's "on_stack" key."""
    # The ledger's redis-server starts before the Stack (the exporter and the probe tasks read its URL from
    # LAB_LEDGER_URL) and stops after it.
    with LedgerServer(run_dir / "ledger") as ledger_server:
        cfg = StackConfig(
            run_dir=run_dir,
            profile=profile,
            workers=2,
            flower=True,
            prometheus=True,
            overrides=dict(CHECK_OVERRIDES),
            **stack_extras(ledger_server.url),
        )
        with Stack(cfg) as stack:
            summary, truth = _check_on(stack, ledger_server.url, tasks, console, extra_items, on_stack)
    if console:
        console.print(f"ground truth: {truth}")
    return summary


def _check_on(
    stack: Stack,
    ledger_url: str,
    tasks: int,
    console: Console | None,
    extra_items: list[Item] | None,
    on_stack: Callable[[Stack], Any] | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    if console:
        console.print(f"stack up: Prometheus {stack.urls['prometheus']}, exporter {stack.urls['exporter']}")
    since = time.time()
    prom = PromClient(stack.urls["prometheus"])
    baseline = prom.scalar("sum(celery_task_succeeded_total)") or 0.0  # no series yet: nothing succeeded
    traffic = drive_traffic(stack, tasks, prom, baseline, console)
    chaos = drive_chaos(stack, ledger_url, console)
    load, lint = drive_load(stack, prom, since, console)
    truth = succeeded_agrees(prom, stack, baseline)
    wait_caught_up(prom, time.time())
    prom.close()
    items = collect_items() + (extra_items or [])
    summary = check_stack(stack, console, items=items, since=since, lint=lint)
    summary["traffic"] = traffic
    summary["chaos"] = chaos
    summary["load"] = load
    summary["ground_truth"] = truth
    summary["prometheus_url"] = stack.urls["prometheus"]
    if on_stack is not None:
        summary["on_stack"] = on_stack(stack)
    if not truth["agrees"]:
        summary["passed"] = False
        summary["failures"].append({"kind": "ground_truth", "where": "succeeded", "detail": json.dumps(truth)})
    if "CeleryWorkerLost" not in summary["alerts_firing"] and traffic["killed"]:
        summary["passed"] = False
        summary["failures"].append(
            {"kind": "alert", "where": "CeleryWorkerLost", "detail": "a pool child was killed but it is not firing"}
        )
    return summary, truth
