"""``lab dashboards check``: every dashboard query and every rule, evaluated by a real Prometheus on live data.

No Grafana runs here, so the check does what Grafana would: it substitutes the template variables (All =
``.*``) and the interval macros, sends each panel target, annotation, variable query and rule expression to
Prometheus' HTTP API, and fails on a parse error or an empty answer. Alert expressions are healthy when
empty, so for them only the next rule applies.

A non-empty answer does not prove an expression reads what it names: ``sum(rate(misspelled[5m])) or
vector(0)`` answers 0. So every expression is also parsed (``promql_parser``, a maintained PromQL parser) and
every metric selector in it must have matched series in Prometheus during the run; a selector a healthy run
legitimately leaves empty passes only when its panel target declares so (``Target.empty_ok`` in
dashboards/build.py, metric name -> reason), and the reason is reported.

The traffic it evaluates on (API sign-ups, probe tasks, a killed pool child, a small chaos run, a short Locust
load) is driven by orchestration/dashboards_traffic.py, which combines the uses; this module only evaluates,
and compares the figures with ground truth: the succeeded counter in Prometheus against the SUCCESS results
in the result backend.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import promql_parser
import yaml
from rich.console import Console
from rich.table import Table

from dashboards.build import all_dashboards, empty_ok_declarations
from dashboards.promconfig import RULE_FILES
from lab.errors import StackError
from lab.procs import require_binary, wait_until
from lab.prometheus import PromClient
from lab.stack import Stack

WINDOW = "2m"  # stands in for $__rate_interval and $__range: covers a whole check run
MACROS = ("$__rate_interval", "$__interval", "$__range")
VARIABLES = ("queue", "task", "worker")
# MatchOp defines no hash, so this is a list of pairs rather than a dict.
_MATCH_OPS = (
    (promql_parser.MatchOp.Equal, "="),
    (promql_parser.MatchOp.NotEqual, "!="),
    (promql_parser.MatchOp.Re, "=~"),
    (promql_parser.MatchOp.NotRe, "!~"),
)


@dataclass
class Item:
    kind: str  # panel, annotation, variable, record, alert
    where: str
    expr: str
    status: str = "pending"  # ok, empty, error
    detail: str = ""
    # Metric name -> why a healthy run may have no series of it (from the panel target's declaration).
    empty_ok: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Selector:
    """One vector selector of an expression: its metric name (None when only ``__name__`` matchers name it)
    and its label matchers as (label, op, value), value unescaped. Offset and ``@`` are dropped: whether the
    selector matches series at all is the question, not at which time an expression reads them."""

    metric: str | None
    matchers: tuple[tuple[str, str, str], ...] = ()
    or_matchers: tuple[tuple[tuple[str, str, str], ...], ...] = ()

    @property
    def name(self) -> str | None:
        """The metric name, also when written as ``{__name__="..."}``."""
        if self.metric:
            return self.metric
        return next((v for k, op, v in self.matchers if k == "__name__" and op == "="), None)

    def __str__(self) -> str:
        groups = [g for g in (self.matchers, *self.or_matchers) if g]
        if self.metric and not groups:
            return self.metric
        body = " or ".join(", ".join(f"{k}{op}{json.dumps(v, ensure_ascii=False)}" for k, op, v in g) for g in groups)
        return f"{self.metric or ''}{{{body}}}"


# --- expressions -------------------------------------------------------------------------------------------
def substitute(expr: str, window: str = WINDOW) -> str:
    """What Grafana sends for "All" on every variable, with the interval macros set to ``window``."""
    for macro in MACROS:
        expr = expr.replace(macro, window)
    for var in VARIABLES:
        expr = expr.replace(f"${{{var}}}", ".*").replace(f"${var}", ".*")
    return expr


def _matchers(group: list[Any]) -> tuple[tuple[str, str, str], ...]:
    out = []
    for m in group:
        op = next(text for parsed, text in _MATCH_OPS if parsed == m.op)
        out.append((m.name, op, m.value))
    return tuple(out)


def selectors(expr: str) -> list[Selector]:
    """Every vector selector of a PromQL expression (those inside range vectors and subqueries included),
    each once, in the order they appear. Grafana's variables and macros are substituted first, as the check
    sends them. Raises ValueError when the expression does not parse."""
    found: list[Selector] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            ms = node.matchers
            sel = Selector(node.name, _matchers(ms.matchers), tuple(_matchers(g) for g in ms.or_matchers))
            if sel not in found:
                found.append(sel)

    promql_parser.walk(promql_parser.parse(substitute(expr)), pre_visit=visit)
    return found


def _label_values_query(expr: str) -> tuple[str | None, str]:
    """Grafana's ``label_values([selector,] label)`` -> (selector or None, label)."""
    m = re.fullmatch(r"label_values\((?:(.*),\s*)?(\w+)\)", expr.strip())
    if not m:
        raise ValueError(f"not a label_values() query: {expr}")
    return m.group(1), m.group(2)


def item_selectors(item: Item) -> list[Selector]:
    """The selectors an item reads: a variable's ``label_values`` selector, any other item's expression."""
    if item.kind == "variable":
        match, _label = _label_values_query(substitute(item.expr))
        return selectors(match) if match else []
    return selectors(item.expr)


def _panel_where(dashboard: str, panel: str, ref: str) -> str:
    return f"{dashboard} / {panel} / {ref}"


def declared_empty_ok(item: Item) -> dict[str, str]:
    """The item's own ``empty_ok`` and, for a panel target, what its definition in dashboards/build.py
    declares (the Grafana JSON the items are read from does not carry it)."""
    declared: dict[str, str] = {}
    if item.kind == "panel":
        by_where = {_panel_where(*key): metrics for key, metrics in empty_ok_declarations().items()}
        declared = dict(by_where.get(item.where, {}))
    return {**declared, **item.empty_ok}


def collect_items(dashboards: dict[str, dict[str, Any]] | None = None) -> list[Item]:
    """Every target of every dashboard, their annotations and variables, and every rule."""
    items: list[Item] = []
    for data in (dashboards or all_dashboards()).values():
        title = data["title"]
        for panel in data.get("panels", []):
            for target in panel.get("targets") or []:
                item = Item("panel", _panel_where(title, panel["title"], target["refId"]), target["expr"])
                item.empty_ok = declared_empty_ok(item)
                items.append(item)
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
def _has_data(result: list[dict[str, Any]]) -> bool:
    for series in result:
        value = float(series["value"][1])
        if not math.isnan(value):
            return True
    return False


def selector_matched(prom: PromClient, selector: Selector, window: tuple[float, float] | None = None) -> bool:
    """Whether Prometheus holds a series the selector matches with a sample in ``window`` (start, end), or
    anywhere in its TSDB without one. The series API, not ``count()`` at one instant: a series that went
    stale before the end of the run (Locust's, once its master exits) still counts."""
    params: dict[str, Any] = {"match[]": str(selector)}
    if window is not None:
        params["start"], params["end"] = window
    resp = prom.http.get("/api/v1/series", params=params)
    body = resp.json()
    if body.get("status") != "success":
        raise ValueError(f"series {selector}: {body.get('errorType')}: {body.get('error')}")
    return bool(body["data"])


def unmatched_selectors(
    prom: PromClient, item: Item, window: tuple[float, float] | None = None
) -> tuple[list[str], list[str]]:
    """(failures, accepted): a line for each of the item's selectors that matched no series, split by whether
    the item declares its metric may be empty (those lines carry the declared reason)."""
    failures, accepted = [], []
    empty_ok = declared_empty_ok(item)
    for sel in item_selectors(item):
        if selector_matched(prom, sel, window):
            continue
        reason = empty_ok.get(sel.name or "")
        if reason:
            accepted.append(f"selector {sel} matched no series, declared empty_ok: {reason}")
        else:
            failures.append(f"selector {sel} matched no series during the run (misspelled metric?)")
    return failures, accepted


def evaluate(prom: PromClient, item: Item, window: tuple[float, float] | None = None) -> Item:
    """Run one target; with ``window`` (start, end) a panel or annotation has data if any point in the window
    has, as a dashboard over that time range would show it (a short burst is over before "now" has a rate,
    and a Locust run's series go stale once its master exits). Every selector it reads must also have matched
    series in the window (in the whole TSDB without one), unless the item declares its metric empty_ok."""
    expr = substitute(item.expr)
    try:
        try:
            item_selectors(item)
        except ValueError as exc:
            raise ValueError(f"parse error: {exc}") from exc
        if item.kind == "variable":
            match, label = _label_values_query(expr)
            values = prom.label_values(label, match)
        else:
            ranged = window is not None and item.kind in {"panel", "annotation"}
            result = prom.query_range(expr, *window) if ranged else prom.query(expr)
        failures, accepted = unmatched_selectors(prom, item, window)
    except (ValueError, httpx.HTTPError) as exc:
        item.status, item.detail = "error", str(exc)
        return item
    if failures:
        item.status, item.detail = "empty", "; ".join(failures + accepted)
        return item
    if item.kind == "variable":
        item.status, item.detail = ("ok", f"{len(values)} values") if values else ("empty", "no values")
    elif item.kind == "alert":
        item.status, item.detail = "ok", "firing" if result else "parses, inputs present, not firing"
    else:
        item.status, item.detail = ("ok", f"{len(result)} series") if _has_data(result) else ("empty", "no data")
    item.detail = "; ".join([item.detail, *accepted])
    return item


# promtool's naming lint flags a gauge ending in _count; these are celery-exporter's names, kept so that the
# dashboards written for it read the lab unchanged. Only these metrics, and only this finding, are accepted.
ACCEPTED_LINT = {
    name: '_count" suffix'
    for name in ("celery_active_consumer_count", "celery_active_worker_count", "celery_active_process_count")
}


def promtool_check_metrics(url: str) -> tuple[bool, str]:
    """``promtool check metrics`` on one endpoint's exposition (lint: names, units, HELP), less ACCEPTED_LINT."""
    promtool = require_binary("promtool", "prometheus")
    try:
        body = httpx.get(url, timeout=10).content
    except httpx.HTTPError as exc:
        return False, f"{url} unreadable: {exc!r}"
    proc = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=60, check=False)
    lines = (proc.stdout + proc.stderr).decode(errors="replace").strip().splitlines()
    accepted = [ln for ln in lines if (finding := ACCEPTED_LINT.get(ln.split(" ", 1)[0])) and finding in ln]
    rest = [ln for ln in lines if ln not in accepted]
    ok = proc.returncode == 0 or (bool(accepted) and not rest)
    note = [f"accepted (celery-exporter's name): {ln}" for ln in accepted]
    return ok, "\n".join(rest + note)


def metrics_endpoints(stack: Stack) -> dict[str, str]:
    """The Stack's own endpoints. Locust's lives only as long as a load runs: ``drive_load`` lints it then."""
    urls = {"exporter": f"{stack.urls['exporter']}/metrics"}
    for name in ("api", "flower"):
        if name in stack.urls:
            urls[name] = f"{stack.urls[name]}/metrics"
    return urls


# --- ground truth ------------------------------------------------------------------------------------------
def backend_states(stack: Stack) -> Counter[str]:
    """Final states of every task this Stack ran, from the result backend itself: its keys found by the
    backend's own prefix, its values decoded by the backend (Celery's API, not a hand-parsed key layout)."""
    backend = stack.celery.backend
    client = stack.redis(1)
    try:
        states: Counter[str] = Counter()
        prefix = backend.task_keyprefix  # bytes on the Redis backend
        pattern = (prefix.decode() if isinstance(prefix, bytes) else str(prefix)) + "*"
        for key in client.scan_iter(pattern, count=500):
            raw = client.get(key)
            if raw:
                states[backend.decode_result(raw).get("status", "?")] += 1
        return states
    finally:
        client.close()


def succeeded_agrees(prom: PromClient, stack: Stack, baseline: float, timeout: float = 45.0) -> dict[str, Any]:
    """increase of celery_task_succeeded_total over the run (end minus start, exact) vs the backend."""
    expr = "sum(celery_task_succeeded_total)"
    last: dict[str, Any] = {}

    def agree() -> bool:
        truth = backend_states(stack)["SUCCESS"]
        counted = (prom.scalar(expr) or 0.0) - baseline  # sum() over no series yet: nothing succeeded
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


def wait_caught_up(prom: PromClient, since: float, scrapes: float = 3.0) -> None:
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
    prom = PromClient(stack.urls["prometheus"])
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


def demo_section(stack: Stack, console: Console) -> dict[str, Any]:
    """For ``lab demo`` on a Stack started with ``prometheus=True``, after its tasks finished: every overview
    panel evaluated on the demo's own data, and the succeeded count against the result backend."""
    if "prometheus" not in stack.urls:
        return {"skipped": "the stack runs without Prometheus (StackConfig(prometheus=True))"}
    prom = PromClient(stack.urls["prometheus"])
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
