"""``lab dashboards check``: every dashboard query and every rule, evaluated by a real Prometheus on live data.

No Grafana runs here, so the check does what Grafana would: it substitutes the template variables (All =
``.*``) and the interval macros, sends each panel target, annotation, variable query and rule expression to
Prometheus' HTTP API, and fails on a parse error or an empty answer. Alert expressions are healthy when
empty, so for them the check asks instead that every metric they read exists.

Before that it drives real traffic through a Stack started with the exporter and Prometheus: sign-ups
through the API (one SMTP refusal forces a retry), probe tasks that succeed, fail, or wait for a countdown,
one SIGKILLed pool child mid-task, and one announced chaos fault; then a small chaos experiment whose loss
ledger the exporter serves (``celery_lab_ledger_*``), and a short Locust load that the Stack's Prometheus
scrapes as job "locust", so the "Load test" and "Chaos" dashboards have data of their own. Then it compares
the figures with ground truth: the succeeded counter in Prometheus against the SUCCESS results in the result
backend.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import yaml
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from chaos.experiment import SCHEMA as EXPERIMENT_SCHEMA
from chaos.experiment import Experiment
from chaos.ledger import Ledger, LedgerServer
from chaos.runner import run_on_stack, stack_extras
from dashboards.build import all_dashboards
from dashboards.probe import WORK_TASK
from dashboards.promconfig import RULE_FILES
from lab.exporter import emit_fault
from lab.procs import StackError, require_binary, wait_until
from lab.stack import Stack, StackConfig
from loadtests.common.config import get_scenario
from loadtests.runner import STARTUP_ALLOWANCE_S, LocustRun, run_scenario

WINDOW = "2m"  # stands in for $__rate_interval and $__range: covers a whole check run
MACROS = ("$__rate_interval", "$__interval", "$__range")
VARIABLES = ("queue", "task", "worker")
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
# so it drains in seconds whatever the visibility timeout).
CHAOS_EXPERIMENT: dict[str, Any] = {
    "title": "dashboards check: a busy pool child SIGKILLed under a few ledger probes",
    "description": "Feeds the Chaos dashboard's ledger panels and fault annotations during `lab dashboards check`.",
    "configuration": {"workers": 2, "tasks": 16, "task_duration_s": 0.2, "horizon_s": 10, "deadline_s": 60},
    "expected": "no-loss",
    "steady-state-hypothesis": {
        "title": "every sent task completes",
        "probes": [
            {
                "type": "probe",
                "name": "nothing lost",
                "provider": {"type": "journal", "metric": "ledger.lost"},
                "tolerance": 0,
            }
        ],
    },
    "method": [
        {"type": "action", "name": "publish the probes", "provider": {"type": "load"}},
        {
            "type": "action",
            "name": "SIGKILL the busiest pool child",
            "provider": {"type": "fault", "kind": "kill_pool_child", "target": "busiest"},
            "trigger": {"after_completions": 4},
        },
    ],
}
FINAL = {"SUCCESS", "FAILURE", "REVOKED"}
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset", "bool"}
_KEYWORDS |= {"inf", "nan", "le"}


@dataclass
class Item:
    kind: str  # panel, annotation, variable, record, alert
    where: str
    expr: str
    status: str = "pending"  # ok, empty, error
    detail: str = ""


# --- expressions -------------------------------------------------------------------------------------------
def substitute(expr: str, window: str = WINDOW) -> str:
    """What Grafana sends for "All" on every variable, with the interval macros set to ``window``."""
    for macro in MACROS:
        expr = expr.replace(macro, window)
    for var in VARIABLES:
        expr = expr.replace(f"${{{var}}}", ".*").replace(f"${var}", ".*")
    return expr


def referenced_metrics(expr: str) -> set[str]:
    """Metric names a PromQL expression reads (good enough for the lab's rules: no nested strings)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][\w:]*", text):
        name = m.group(0)
        following = text[m.end() :].lstrip()
        if following.startswith("(") or name.lower() in _KEYWORDS:
            continue
        if m.start() > 0 and (text[m.start() - 1].isdigit() or text[m.start() - 1] == "."):
            continue  # a unit suffix like 10m or 1e3
        names.add(name)
    return names


def collect_items(dashboards: dict[str, dict[str, Any]] | None = None) -> list[Item]:
    """Every target of every dashboard, their annotations and variables, and every rule."""
    items: list[Item] = []
    for data in (dashboards or all_dashboards()).values():
        title = data["title"]
        for panel in data.get("panels", []):
            for target in panel.get("targets") or []:
                items.append(Item("panel", f"{title} / {panel['title']} / {target['refId']}", target["expr"]))
        for ann in data.get("annotations", {}).get("list", []):
            if ann.get("expr"):
                items.append(Item("annotation", f"{title} / annotation {ann['name']}", ann["expr"]))
        for var in data.get("templating", {}).get("list", []):
            items.append(Item("variable", f"{title} / ${var['name']}", str(var["query"])))
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                kind = "alert" if "alert" in rule else "record"
                items.append(Item(kind, f"{path.name} / {rule.get('alert') or rule.get('record')}", rule["expr"]))
    return items


# --- Prometheus --------------------------------------------------------------------------------------------
class Prom:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, timeout=10)

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = at
        body = self.http.get("/api/v1/query", params=params).json()
        if body.get("status") != "success":
            raise ValueError(f"{body.get('errorType')}: {body.get('error')}")
        data = body["data"]
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def query_range(self, expr: str, start: float, end: float, step: float = 1.0) -> list[dict[str, Any]]:
        """Like ``query``, over a window; each series' samples are folded into ``value`` (the first non-NaN)."""
        params = {"query": expr, "start": start, "end": end, "step": step}
        body = self.http.get("/api/v1/query_range", params=params).json()
        if body.get("status") != "success":
            raise ValueError(f"{body.get('errorType')}: {body.get('error')}")
        out = []
        for series in body["data"]["result"]:
            values = [v for v in series["values"] if not math.isnan(float(v[1]))] or series["values"][:1]
            out.append({"metric": series["metric"], "value": values[0]})
        return out

    def scalar(self, expr: str, at: float | None = None) -> float:
        result = self.query(expr, at)
        return float(result[0]["value"][1]) if result else 0.0

    def label_values(self, label: str, match: str | None) -> list[str]:
        params = {"match[]": match} if match else None
        body = self.http.get(f"/api/v1/label/{label}/values", params=params).json()
        if body.get("status") != "success":
            raise ValueError(f"{body.get('errorType')}: {body.get('error')}")
        return list(body["data"])

    def alerts(self) -> list[dict[str, Any]]:
        return self.http.get("/api/v1/alerts").json()["data"]["alerts"]

    def rules_evaluated(self) -> bool:
        groups = self.http.get("/api/v1/rules").json()["data"]["groups"]
        return bool(groups) and all(g.get("lastEvaluation", "").startswith("20") for g in groups)

    def close(self) -> None:
        self.http.close()


def _has_data(result: list[dict[str, Any]]) -> bool:
    for series in result:
        value = float(series["value"][1])
        if not math.isnan(value):
            return True
    return False


def evaluate(prom: Prom, item: Item, window: tuple[float, float] | None = None) -> Item:
    """Run one target; with ``window`` (start, end) a panel or annotation has data if any point in the window
    has, as a dashboard over that time range would show it (a short burst is over before "now" has a rate,
    and a Locust run's series go stale once its master exits)."""
    expr = substitute(item.expr)
    try:
        if item.kind == "variable":
            m = re.fullmatch(r"label_values\((?:(.*),\s*)?(\w+)\)", expr.strip())
            if not m:
                raise ValueError(f"not a label_values() query: {expr}")
            values = prom.label_values(m.group(2), m.group(1))
            item.status, item.detail = ("ok", f"{len(values)} values") if values else ("empty", "no values")
            return item
        ranged = window is not None and item.kind in {"panel", "annotation"}
        result = prom.query_range(expr, *window) if ranged else prom.query(expr)
    except (ValueError, httpx.HTTPError) as exc:
        item.status, item.detail = "error", str(exc)
        return item
    if item.kind == "alert":
        missing = [m for m in sorted(referenced_metrics(item.expr)) if not prom.query(f"count({m})")]
        if missing:
            item.status, item.detail = "empty", f"reads metrics with no series: {', '.join(missing)}"
        else:
            item.status, item.detail = "ok", "firing" if result else "parses, inputs present, not firing"
        return item
    item.status, item.detail = ("ok", f"{len(result)} series") if _has_data(result) else ("empty", "no data")
    return item


def promtool_check_metrics(url: str) -> tuple[bool, str]:
    """``promtool check metrics`` on one endpoint's exposition (lint: names, units, HELP)."""
    promtool = require_binary("promtool", "prometheus")
    try:
        body = httpx.get(url, timeout=10).content
    except httpx.HTTPError as exc:
        return False, f"{url} unreadable: {exc!r}"
    proc = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=60, check=False)
    return proc.returncode == 0, (proc.stdout + proc.stderr).decode(errors="replace").strip()


def metrics_endpoints(stack: Stack) -> dict[str, str]:
    """The Stack's own endpoints. Locust's lives only as long as a load runs: ``drive_load`` lints it then."""
    urls = {"exporter": f"{stack.urls['exporter']}/metrics"}
    for name in ("api", "flower"):
        if name in stack.urls:
            urls[name] = f"{stack.urls[name]}/metrics"
    return urls


# --- ground truth ------------------------------------------------------------------------------------------
def backend_states(stack: Stack) -> Counter[str]:
    """Final states of every task this Stack ran, from the result backend itself."""
    client = stack.redis(1)
    try:
        states: Counter[str] = Counter()
        for key in client.scan_iter("celery-task-meta-*", count=500):
            raw = client.get(key)
            if raw:
                states[json.loads(raw).get("status", "?")] += 1
        return states
    finally:
        client.close()


def succeeded_agrees(prom: Prom, stack: Stack, baseline: float, timeout: float = 45.0) -> dict[str, Any]:
    """increase of celery_task_succeeded_total over the run (end minus start, exact) vs the backend."""
    expr = "sum(celery_task_succeeded_total)"
    last: dict[str, Any] = {}

    def agree() -> bool:
        truth = backend_states(stack)["SUCCESS"]
        counted = prom.scalar(expr) - baseline
        last.update({"backend_success": truth, "prometheus_increase": counted})
        return counted == truth

    try:
        wait_until(agree, timeout=timeout, what="Prometheus' succeeded count to equal the backend's", interval=1.0)
        last["agrees"] = True
    except StackError:
        last["agrees"] = False
    # For comparison only: increase() extrapolates to the window's edges, so it is not an exact count.
    last["promql_increase_" + WINDOW] = prom.scalar(f"sum(increase(celery_task_succeeded_total[{WINDOW}]))")
    return last


# --- traffic -----------------------------------------------------------------------------------------------
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
        if s.name == "celery_task_started_total" and s.labels.get("hostname") == hostname
    )


def _finish(stack: Stack, ids: list[str]) -> None:
    wait_until(
        lambda: all(stack.celery.AsyncResult(i).state in FINAL for i in ids),
        timeout=120,
        what="every task of the check in a final state",
        interval=0.5,
    )


def drive_traffic(
    stack: Stack, tasks: int, prom: Prom, baseline: float, console: Console | None = None
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
    states = Counter(stack.celery.AsyncResult(i).state for i in first + second + probes)
    return {"tasks": len(first) + len(second) + len(probes), "states": dict(states), "killed": children[:1]}


def drive_chaos(stack: Stack, ledger_url: str, console: Console | None = None) -> dict[str, Any]:
    """A small chaos experiment (``CHAOS_EXPERIMENT``) on the check's Stack, its ledger in ``ledger_url``
    (which the exporter serves as ``celery_lab_ledger_*``); run_on_stack announces each fault to the exporter."""
    say = console.print if console else (lambda *_a, **_k: None)
    # Validated like a file under chaos/experiments/, so it cannot drift from what the chaos runner accepts.
    jsonschema.validate(CHAOS_EXPERIMENT, EXPERIMENT_SCHEMA)
    exp = Experiment("dashboards-check", Path(__file__), CHAOS_EXPERIMENT)
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
    stack: Stack, prom: Prom, since: float, console: Console | None = None
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
            return all(
                evaluate(prom, Item(i.kind, i.where, i.expr), (since, time.time())).status == "ok" for i in pending
            )

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


def wait_caught_up(prom: Prom, since: float, scrapes: float = 3.0) -> None:
    """Until every target was scraped and every rule group evaluated a few times after ``since``."""

    def caught_up() -> bool:
        scraped = prom.query("min(timestamp(up))")
        groups = prom.http.get("/api/v1/rules").json()["data"]["groups"]
        evaluated = [g.get("lastEvaluation", "") for g in groups]
        return (
            bool(scraped)
            and float(scraped[0]["value"][1]) > since + scrapes
            and all(_rfc3339(e) > since + scrapes for e in evaluated)
        )

    wait_until(caught_up, timeout=60, what="Prometheus scraping and evaluating after the traffic", interval=0.5)


def _rfc3339(text: str) -> float:
    """Prometheus' nanosecond RFC 3339 timestamps (Python parses at most microseconds)."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", text)
    if not m:
        return 0.0
    zone = "+00:00" if m.group(3) == "Z" else m.group(3)
    return datetime.fromisoformat(m.group(1) + zone).timestamp() + float("0." + (m.group(2) or "0"))


# --- the check ---------------------------------------------------------------------------------------------
def check_stack(
    stack: Stack,
    console: Console | None = None,
    *,
    items: list[Item] | None = None,
    since: float | None = None,
    lint: dict[str, tuple[bool, str]] | None = None,
) -> dict[str, Any]:
    """Evaluate everything against a Stack that has Prometheus and has seen traffic.

    ``since``: panels and annotations are evaluated over [since, now], as a dashboard showing the run would
    (without it, at "now" only). ``lint``: ``promtool check metrics`` results already taken from endpoints
    that are gone by now (Locust's), reported with the Stack's own."""
    prom = Prom(stack.urls["prometheus"])
    try:
        wait_until(prom.rules_evaluated, timeout=60, what="Prometheus evaluating the lab's rules", interval=0.5)
        targets_up = prom.scalar("count(up == 1)")
        window = (since, time.time()) if since is not None else None
        # Jobs up at any point of the window: Locust's target is down again once its load ended.
        span = f"{math.ceil(time.time() - since) + 1}s" if since is not None else "1s"
        jobs = {r["metric"].get("job", "") for r in prom.query(f"max_over_time(up[{span}]) == 1")}
        results = [evaluate(prom, item, window) for item in (items or collect_items())]
        firing = sorted({a["labels"]["alertname"] for a in prom.alerts() if a["state"] == "firing"})
    finally:
        prom.close()
    lint = {**(lint or {}), **{name: promtool_check_metrics(url) for name, url in metrics_endpoints(stack).items()}}
    failures = [asdict(r) for r in results if r.status in {"error", "empty"}]
    failures += [{"kind": "metrics", "where": name, "detail": out} for name, (ok, out) in lint.items() if not ok]
    summary = {
        "passed": not failures,
        "evaluated": dict(Counter(r.status for r in results)),
        "scraped_jobs": sorted(jobs),
        "targets_up": targets_up,
        "alerts_firing": firing,
        "promtool_check_metrics": {name: ok for name, (ok, _out) in lint.items()},
        "failures": failures,
        "items": [asdict(r) for r in results],
    }
    if console:
        print_results(summary, console)
    return summary


def print_results(summary: dict[str, Any], console: Console) -> None:
    table = Table(title="dashboards check")
    for col in ("kind", "where", "status", "detail"):
        table.add_column(col, overflow="fold")
    for r in summary["items"]:
        style = "green" if r["status"] == "ok" else "red"
        table.add_row(r["kind"], r["where"], f"[{style}]{r['status']}[/]", r["detail"][:80])
    console.print(table)
    console.print(f"evaluated: {summary['evaluated']}; alerts firing: {summary['alerts_firing']}")
    console.print(f"promtool check metrics: {summary['promtool_check_metrics']}")


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
        extras = stack_extras(ledger_server.url)
        cfg = StackConfig(
            run_dir=run_dir,
            profile=profile,
            workers=2,
            flower=True,
            prometheus=True,
            extra_env=dict(extras["extra_env"]),
            extra_task_modules=["dashboards.probe", *extras["extra_task_modules"]],
            overrides=dict(CHECK_OVERRIDES),
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
    prom = Prom(stack.urls["prometheus"])
    baseline = prom.scalar("sum(celery_task_succeeded_total)")
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


def demo_section(stack: Stack, console: Console) -> dict[str, Any]:
    """For ``lab demo`` on a Stack started with ``prometheus=True``, after its tasks finished: every overview
    panel evaluated on the demo's own data, and the succeeded count against the result backend."""
    if "prometheus" not in stack.urls:
        return {"skipped": "the stack runs without Prometheus (StackConfig(prometheus=True))"}
    prom = Prom(stack.urls["prometheus"])
    try:
        truth = succeeded_agrees(prom, stack, baseline=0.0)
        wait_caught_up(prom, time.time())
        overview = {k: v for k, v in all_dashboards().items() if k == "celery-overview"}
        window = (min(p.started_at for p in stack.procs.values()), time.time())
        items = [evaluate(prom, i, window) for i in collect_items(overview) if i.kind in {"panel", "variable"}]
    finally:
        prom.close()
    empty = [f"{i.where}: {i.status} {i.detail}" for i in items if i.status != "ok"]
    section = {
        "passed": truth["agrees"] and not empty,
        "panels_with_data": sum(i.status == "ok" for i in items),
        "panels_checked": len(items),
        "without_data": empty,
        "succeeded": truth,
        "prometheus_url": stack.urls["prometheus"],
    }
    verdict = "[green]agree[/]" if truth["agrees"] else "[red]DISAGREE[/]"
    console.print(
        f"metrics: {section['panels_with_data']}/{len(items)} overview queries return data; succeeded "
        f"{truth['prometheus_increase']:g} (Prometheus) vs {truth['backend_success']} (result backend): {verdict}"
    )
    for line in empty:
        console.print(f"  [red]no data[/] {line}")
    return section


def write_summary(summary: dict[str, Any], run_dir: Path) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "dashboards-check.json"
    path.write_text(json.dumps(summary, indent=2, default=str))
    return path
