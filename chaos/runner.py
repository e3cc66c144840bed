"""Run one experiment: ledger + Stack up, load, faults on triggers, rollbacks, drain, check, journal.

``run_experiment`` starts everything itself (a ledger redis-server, then a Stack whose workers load
``chaos.probe`` and know the ledger's URL) and stops it all, on failure too. ``run_on_stack`` does the
experiment proper on a Stack someone else started with ``stack_fields``; ``demo_section`` is what
``lab demo`` calls.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import httpx
import psutil
import redis
from kombu.exceptions import OperationalError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from app.core.broker import INFLIGHT_SEP
from chaos.checker import check
from chaos.experiment import Experiment, load_experiment
from chaos.faults import FAULTS, QUEUE, ROLLBACKS, FaultContext, FaultRecord, wait_for_trigger
from chaos.ledger import LEDGER_ENV, Ledger, LedgerServer
from chaos.probe import ADDRESS_DOMAIN, NEEDS_SMTP, PROBES, send_probe
from lab.exporter import emit_fault
from lab.procs import StackError, wait_until
from lab.rabbitmq import STATS_INTERVAL_MS, peek_headers, queue_depth
from lab.stack import Stack, StackConfig

PROBE_MODULE = "chaos.probe"
DEMO_EXPERIMENT = "demo-worker-kill"
PUBLISH_BATCH = 100


class Reporter(Protocol):
    def log(self, message: str) -> None: ...
    def progress(self, done: int, total: int, phase: str) -> None: ...


class QuietReporter:
    def log(self, message: str) -> None:
        pass

    def progress(self, done: int, total: int, phase: str) -> None:
        pass


class ConsoleReporter:
    """Live progress for the CLI: one bar of tasks completed (ledger), fault lines printed above it."""

    def __init__(self, console: Console) -> None:
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
        self._progress = Progress(*columns, console=console, transient=False)
        self._bar = self._progress.add_task("starting", total=None)

    @contextlib.contextmanager
    def live(self) -> Iterator[ConsoleReporter]:
        with self._progress:
            yield self

    def log(self, message: str) -> None:
        self._progress.console.print(f"  {message}", highlight=False)

    def progress(self, done: int, total: int, phase: str) -> None:
        self._progress.update(self._bar, completed=done, total=total, description=phase)


def stack_extras(ledger_url: str) -> dict[str, Any]:
    """The StackConfig fields a Stack needs for chaos experiments to run on it."""
    return {"extra_env": {LEDGER_ENV: ledger_url}, "extra_task_modules": [PROBE_MODULE]}


def stack_fields(exp: Experiment, ledger_url: str) -> dict[str, Any]:
    """StackConfig fields for a Stack that can host ``exp`` (merge ``overrides``/``extra_env`` with your own)."""
    overrides = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in exp.config["overrides"].items()}
    cfg = exp.config
    fields = {k: cfg[k] for k in ("redis_aof", "broker", "net_proxy")}
    return {"overrides": overrides, **fields, **stack_extras(ledger_url)}


def stack_config(exp: Experiment, run_dir: Path, ledger_url: str, profile: str | None = None) -> StackConfig:
    cfg = exp.config
    return StackConfig(
        run_dir=run_dir,
        profile=profile or cfg["profile"],
        workers=cfg["workers"],
        api=False,
        smtp=cfg["probe"] in NEEDS_SMTP,
        ai_stub=False,
        **stack_fields(exp, ledger_url),
    )


# --- broker and backend state -----------------------------------------------------------------------------
def _message_id(raw: bytes | str) -> str | None:
    with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
        return str(json.loads(raw)["headers"]["id"])
    return None


def broker_leftovers(stack: Stack) -> tuple[set[str], set[str], str | None]:
    """Task ids still queued and held unacknowledged; an error string if the broker can't say.

    Redis: the queue list, and the ``unacked`` hash (messages a worker fetched, restored after the visibility
    timeout) plus the reliable fetch's inflight lists. RabbitMQ: the ready messages (peeked through the
    management API and requeued), and the messages live workers hold (reserved or active): on RabbitMQ only
    a live consumer holds a message unacknowledged, a dead one's come back at once."""
    if stack.broker == "rabbitmq":
        try:
            headers = peek_headers(stack.urls["rabbitmq_management"], QUEUE)
            queued = {str(h["id"]) for h in headers if h.get("id")}
            return queued, held_by_workers(stack), None
        except (httpx.HTTPError, OSError, OperationalError) as exc:
            return set(), set(), f"broker unreadable: {exc}"
    client = stack.redis(0)
    try:
        queued = {i for raw in client.lrange(QUEUE, 0, -1) if (i := _message_id(raw))}
        unacked = set()
        for raw in client.hvals("unacked"):
            with contextlib.suppress(ValueError, IndexError, TypeError):
                if i := _message_id(json.dumps(json.loads(raw)[0])):
                    unacked.add(i)
        # Fetched by a consumer that died before recording them (app/core/broker.py's reliable fetch): they
        # wait for the sweep, like unacked ones for the visibility timeout.
        for key in client.scan_iter(f"{QUEUE}{INFLIGHT_SEP}*"):
            unacked.update(i for raw in client.lrange(key, 0, -1) if (i := _message_id(raw)))
        return queued, unacked, None
    except redis.RedisError as exc:
        return set(), set(), f"broker unreadable: {exc}"
    finally:
        client.close()


def held_by_workers(stack: Stack) -> set[str]:
    """Ids the live workers hold (reserved or running), asked over a fresh connection: a pooled one may
    predate a broker restart."""
    held: set[str] = set()
    with stack.celery.connection_for_write() as conn:
        inspect = stack.celery.control.inspect(timeout=1.0, connection=conn)
        for replies in (inspect.reserved() or {}, inspect.active() or {}):
            for requests in replies.values():
                held.update(str(r["id"]) for r in requests if r.get("id"))
    return held


def broker_quiet(stack: Stack) -> bool:
    if stack.broker == "rabbitmq":
        url = stack.urls["rabbitmq_management"]
        try:
            if queue_depth(url, QUEUE) != (0, 0):
                return False
            # The management figures lag by up to a statistics interval: a zero counts once a fresher one agrees.
            time.sleep(2 * STATS_INTERVAL_MS / 1000)
            return queue_depth(url, QUEUE) == (0, 0)
        except httpx.HTTPError:
            return True  # nothing more can come from a broker we cannot read
    client = stack.redis(0)
    try:
        inflight = sum(int(client.llen(k)) for k in client.scan_iter(f"{QUEUE}{INFLIGHT_SEP}*"))
        return int(client.llen(QUEUE)) == 0 and int(client.hlen("unacked")) == 0 and inflight == 0
    except redis.RedisError:
        return True  # nothing more can come from a broker we cannot read
    finally:
        client.close()


def backend_success(stack: Stack, ids: list[str]) -> int | None:
    """Independent count: ids whose result in the result backend is SUCCESS."""
    client = stack.redis(1)
    try:
        pipe = client.pipeline(transaction=False)
        for i in ids:
            pipe.get(f"celery-task-meta-{i}")
        count = 0
        for raw in pipe.execute():
            with contextlib.suppress(ValueError, TypeError):
                count += raw is not None and json.loads(raw).get("status") == "SUCCESS"
        return count
    except redis.RedisError:
        return None
    finally:
        client.close()


def announce(stack: Stack, record: FaultRecord) -> bool:
    """Tell the events exporter (celery_lab_faults_total, the Chaos dashboard's annotations) a fault struck.
    Best effort: the journal is the record; a broker still coming back must not fail the experiment."""
    try:
        emit_fault(stack.celery, record.kind, record.target)
    except (OSError, OperationalError, redis.RedisError):
        return False
    return True


def sink_count(stack: Stack, ids: list[str], completed: int) -> dict[str, Any]:
    """Email probes, counted where they landed (the SMTP sink): an independent count of completed tasks,
    and the emails a user would have received twice."""
    sent = set(ids)
    per_task = Counter(
        rcpt.split("@", 1)[0]
        for m in stack.sink_messages()
        for rcpt in m["rcpt_tos"]
        if rcpt.endswith("@" + ADDRESS_DOMAIN) and rcpt.split("@", 1)[0] in sent
    )
    delivered = len(per_task)
    return {
        "delivered": delivered,
        "emails": sum(per_task.values()),
        "duplicate_emails": sum(n - 1 for n in per_task.values()),
        "agrees": delivered == completed,
    }


# --- verdict ----------------------------------------------------------------------------------------------
def metric(journal: dict[str, Any], path: str) -> Any:
    value: Any = journal
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def within(value: Any, tolerance: Any) -> bool:
    if value is None:
        return False
    if isinstance(tolerance, list):
        lo, hi = tolerance
        return (lo is None or value >= lo) and (hi is None or value <= hi)
    return bool(value == tolerance)


def evaluate(journal: dict[str, Any], exp_data: dict[str, Any]) -> tuple[list[dict[str, Any]], str, str]:
    """Steady-state probes against the journal, then the verdict.

    expected "no-loss": pass iff every probe holds. expected "loss" (a control): pass iff the checker found
    lost tasks, and nothing unexpected ran; the probes are still reported (the loss probe must fail)."""
    results = []
    for probe in exp_data["steady-state-hypothesis"]["probes"]:
        value = metric(journal, probe["provider"]["metric"])
        results.append(
            {
                "name": probe["name"],
                "metric": probe["provider"]["metric"],
                "tolerance": probe["tolerance"],
                "value": value,
                "met": within(value, probe["tolerance"]),
            }
        )
    ledger = journal["ledger"]
    if exp_data["expected"] == "loss":
        ok = ledger["lost"] > 0 and ledger["unexpected"] == 0
        reason = f"control: {ledger['lost']} lost detected" if ok else "control: expected loss, the ledger found none"
    else:
        failed = [r["name"] for r in results if not r["met"]]
        ok = not failed
        reason = "steady state held" if ok else f"steady state violated: {', '.join(failed)}"
    return results, "pass" if ok else "fail", reason


# --- the run ----------------------------------------------------------------------------------------------
def _publish(
    stack: Stack, ledger: Ledger, total: int, duration: float, reporter: Reporter, probe: str = "sleep"
) -> list[str]:
    ids = [str(uuid.uuid4()) for _ in range(total)]
    app = stack.celery
    with app.producer_or_acquire() as producer:
        for start in range(0, total, PUBLISH_BATCH):
            batch = ids[start : start + PUBLISH_BATCH]
            ledger.mark_sent(batch)  # before publishing: a message can never run unrecorded as sent
            for index, task_id in enumerate(batch, start):
                send_probe(app, probe, ledger.run, task_id, index=index, duration_s=duration, producer=producer)
            reporter.progress(ledger.completed_ids(), total, f"publishing {start + len(batch)}/{total}")
    return ids


def _drain(ledger: Ledger, total: int, horizon: float, deadline_at: float, reporter: Reporter) -> str:
    """Wait for every sent id to complete, or for progress to stall longer than the redelivery horizon."""
    last: dict[str, Any] = {"seen": None, "since": time.monotonic()}

    def state() -> str | None:
        missing, executions = ledger.missing(), ledger.completions()
        reporter.progress(total - missing, total, f"draining ({missing} missing)")
        if missing == 0:
            return "drained"
        if (missing, executions) != last["seen"]:
            last["seen"], last["since"] = (missing, executions), time.monotonic()
        elif time.monotonic() - last["since"] > horizon:
            return "stalled"
        return None

    try:
        return wait_until(state, timeout=max(deadline_at - time.monotonic(), 0.1), what="the queue", interval=0.1)
    except StackError:
        return "deadline"


def _settle(stack: Stack, ledger: Ledger, horizon: float) -> bool:
    """After the last id completed, let redelivered copies still queued or running finish (they are duplicates).

    False when the broker never went quiet within the horizon (e.g. a visibility timeout shorter than the
    task keeps restoring copies): the journal then counts the duplicates seen so far."""

    def running() -> bool:
        # A start without a finish on a dead pid is an interrupted execution, not one still running.
        return any(psutil.pid_exists(e.pid) for e in ledger.in_flight())

    try:
        wait_until(lambda: broker_quiet(stack) and not running(), timeout=horizon, what="a quiet broker", interval=0.2)
    except StackError:
        return False
    return True


def run_on_stack(
    exp: Experiment, stack: Stack, ledger: Ledger, reporter: Reporter | None = None, *, profile: str | None = None
) -> dict[str, Any]:
    """The experiment proper, on a Stack started with ``stack_fields(exp, ledger.url)``. Returns the journal."""
    reporter = reporter or QuietReporter()
    cfg = exp.config
    total, duration = int(cfg["tasks"]), float(cfg["task_duration_s"])
    ctx = FaultContext(stack=stack, ledger=ledger, workers=int(cfg["workers"]), log=reporter.log)
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    t0, m0 = time.time(), time.monotonic()
    deadline_at = m0 + float(cfg["deadline_s"])
    faults: list[dict[str, Any]] = []
    records: list[FaultRecord] = []
    rollbacks: list[dict[str, str]] = []
    ids: list[str] = []
    try:
        for action in exp.data["method"]:
            provider = action["provider"]
            if provider["type"] == "load":
                what = f"of {duration:g}s" if cfg["probe"] == "sleep" else f"({PROBES[cfg['probe']]}, the app's own)"
                reporter.log(f"publishing {total} probe tasks {what}")
                ids = _publish(stack, ledger, total, duration, reporter, cfg["probe"])
                continue
            trigger = wait_for_trigger(ctx, action.get("trigger", {}))
            reporter.progress(ledger.completed_ids(), total, f"fault: {action['name']}")
            record = FAULTS[provider["kind"]](ctx, provider)
            records.append(record)
            announced = announce(stack, record)
            faults.append(
                {
                    "kind": record.kind,
                    "target": record.target,
                    "at": round(record.at - t0, 3),
                    "at_epoch": record.at,
                    "name": action["name"],
                    "trigger": trigger,
                    "detail": record.detail,
                    "announced": announced,
                }
            )
    finally:
        for action in exp.data.get("rollbacks", []):
            try:
                rollbacks.append({"name": action["name"], "result": ROLLBACKS[action["provider"]["kind"]](ctx, {})})
            except Exception as exc:  # a failed rollback is reported; the others still run
                rollbacks.append({"name": action["name"], "result": f"failed: {exc}"})
    horizon = float(cfg["horizon_s"])
    drain_state = _drain(ledger, total, horizon, deadline_at, reporter)
    drain_s = round(time.monotonic() - m0, 3)
    settled = _settle(stack, ledger, horizon) if drain_state == "drained" else False
    data = ledger.read()
    queued, unacked, broker_error = broker_leftovers(stack)
    report = check(data.sent, data.starts, data.finishes, [r.at for r in records], queued, unacked)
    success = backend_success(stack, ids)
    s = stack.settings
    journal: dict[str, Any] = {
        "experiment": exp.name,
        "title": exp.title,
        "broker": stack.broker,
        "config": {
            "profile": profile or stack.config.profile,
            "overrides": cfg["overrides"],
            "workers": cfg["workers"],
            "concurrency": s.celery_worker_concurrency,
            "pool": s.celery_worker_pool,
            "acks_late": s.celery_task_acks_late,
            "reject_on_worker_lost": s.celery_task_reject_on_worker_lost,
            "prefetch_multiplier": s.celery_worker_prefetch_multiplier,
            "visibility_timeout_s": s.celery_visibility_timeout,
            "unacked_restore_interval_s": s.celery_unacked_restore_interval,
            "unacked_restore_throttle": s.celery_unacked_restore_throttle,
            "redis_aof": stack.config.redis_aof,
            "tasks": total,
            "probe": cfg["probe"],
            "task": PROBES[cfg["probe"]],
            "task_duration_s": duration,
            "horizon_s": horizon,
        },
        "faults": faults,
        "ledger": report.ledger_summary(),
        "redelivery_s": report.redelivery_s(),
        "leftovers": report.leftovers,
        "expected": exp.expected,
        "verdict": "fail",
        "drain": drain_state,
        "drain_s": drain_s,
        "settled": settled,
        "backend": {"success": success, "agrees": success == report.completed},
        "sink": sink_count(stack, ids, report.completed) if cfg["probe"] in NEEDS_SMTP else None,
        "broker_error": broker_error,
        "rollbacks": rollbacks,
        "details": report.details(),
        "started_at": started_at,
        "duration_s": round(time.monotonic() - m0, 3),
    }
    journal["hypothesis"], journal["verdict"], journal["reason"] = evaluate(journal, exp.data)
    return journal


def run_experiment(
    exp: Experiment, run_dir: Path, reporter: Reporter | None = None, *, profile: str | None = None
) -> dict[str, Any]:
    """Start a ledger and a Stack for ``exp``, run it, stop everything; write and return the journal."""
    reporter = reporter or QuietReporter()
    run_dir.mkdir(parents=True, exist_ok=True)
    t_wall = time.monotonic()
    with LedgerServer(run_dir / "ledger") as server:
        ledger = Ledger(server.url, run=uuid.uuid4().hex[:12])
        try:
            reporter.progress(0, int(exp.config["tasks"]), "starting the stack")
            with Stack(stack_config(exp, run_dir / "stack", server.url, profile)) as stack:
                stack_start_s = round(time.monotonic() - t_wall, 3)
                broker = stack.settings.celery_broker_url
                reporter.log(f"stack up in {stack_start_s}s: workers {stack.worker_pids()}, broker {broker}")
                journal = run_on_stack(exp, stack, ledger, reporter, profile=profile)
                journal["stack_start_s"] = stack_start_s
        finally:
            ledger.close()
    journal["wall_s"] = round(time.monotonic() - t_wall, 3)
    journal["run_dir"] = str(run_dir)
    (run_dir / "journal.json").write_text(json.dumps(journal, indent=2))
    return journal


def stack_key(exp: Experiment, profile: str | None = None) -> str:
    """Experiments with equal keys can share one Stack (same profile, workers, overrides, persistence)."""
    cfg = exp.config
    key = [profile or cfg["profile"], cfg["workers"], cfg["overrides"], cfg["redis_aof"], cfg["broker"]]
    key += [cfg["probe"] in NEEDS_SMTP, cfg["net_proxy"]]
    return json.dumps(key, sort_keys=True)


def run_suite(
    experiments: list[Experiment], run_dir: Path, reporter: Reporter | None = None, *, profile: str | None = None
) -> list[dict[str, Any]]:
    """Run experiments, one Stack per stack_key (groups in order of first appearance).

    Faults leave a Stack as the rollbacks restore it (workers replaced, broker running), and each experiment
    has its own ledger namespace, so sharing saves a Stack start per experiment without mixing evidence. An
    experiment that errors is recorded as a fail and the suite goes on."""
    reporter = reporter or QuietReporter()
    run_dir.mkdir(parents=True, exist_ok=True)
    journals: list[dict[str, Any]] = []
    by_key: dict[str, list[Experiment]] = {}
    for exp in experiments:
        by_key.setdefault(stack_key(exp, profile), []).append(exp)
    groups = list(by_key.values())
    for n, group in enumerate(groups, 1):
        group_dir = run_dir / f"stack{n}"
        with LedgerServer(group_dir / "ledger") as server:
            try:
                stack = Stack(stack_config(group[0], group_dir / "stack", server.url, profile)).start()
            except StackError as exc:
                journals += [_error_journal(e, f"stack did not start: {exc}") for e in group]
                continue
            try:
                for exp in group:
                    reporter.log(f"[bold]{exp.name}[/]: {exp.title}")
                    ledger = Ledger(server.url, run=uuid.uuid4().hex[:12])
                    t_wall = time.monotonic()
                    try:
                        journal = run_on_stack(exp, stack, ledger, reporter, profile=profile)
                    except (StackError, redis.RedisError) as exc:
                        journal = _error_journal(exp, str(exc))
                    finally:
                        ledger.close()
                    journal["wall_s"] = round(time.monotonic() - t_wall, 3)
                    journal["run_dir"] = str(run_dir / exp.name)
                    (run_dir / exp.name).mkdir(parents=True, exist_ok=True)
                    (run_dir / exp.name / "journal.json").write_text(json.dumps(journal, indent=2))
                    reporter.log(f"{exp.name}: {journal['verdict']} ({journal['reason']})")
                    journals.append(journal)
            finally:
                stack.stop()
    return journals


def _error_journal(exp: Experiment, reason: str) -> dict[str, Any]:
    return {
        "experiment": exp.name,
        "title": exp.title,
        "broker": exp.config["broker"],
        "config": exp.config,
        "faults": [],
        "ledger": None,
        "redelivery_s": None,
        "leftovers": None,
        "expected": exp.expected,
        "verdict": "fail",
        "reason": f"error: {reason}",
    }


# --- presentation -----------------------------------------------------------------------------------------
def verdict_table(journal: dict[str, Any]) -> Table:
    ok = journal["verdict"] == "pass"
    colour = "green" if ok else "red"
    table = Table(title=f"{journal['experiment']}: [{colour}]{journal['verdict'].upper()}[/] ({journal['reason']})")
    table.add_column("what")
    table.add_column("value", justify="right")
    for key, value in journal["ledger"].items():
        table.add_row(f"ledger.{key}", str(value))
    table.add_row("redelivery p50 / max (s)", f"{journal['redelivery_s']['p50']} / {journal['redelivery_s']['max']}")
    table.add_row("leftovers queued/unacked/gone", "/".join(str(v) for v in journal["leftovers"].values()))
    table.add_row("faults", ", ".join(f"{f['kind']}@{f['at']}s" for f in journal["faults"]) or "-")
    table.add_row("backend SUCCESS", str(journal["backend"]["success"]))
    if sink := journal.get("sink"):
        table.add_row("SMTP sink: delivered / duplicate emails", f"{sink['delivered']} / {sink['duplicate_emails']}")
    table.add_row("drain", f"{journal['drain']} after {journal['drain_s']}s")
    table.add_row("expected", journal["expected"])
    for probe in journal["hypothesis"]:
        mark = "ok" if probe["met"] else "[red]violated[/]"
        table.add_row(f"probe {probe['name']}", f"{probe['value']} vs {probe['tolerance']}: {mark}")
    return table


def _mismatch(stack: Stack, exp: Experiment) -> str | None:
    """Why ``stack`` cannot host ``exp`` faithfully (a setting the experiment overrides differs), or None."""
    env = stack.settings.as_env()
    for name, value in exp.config["overrides"].items():
        want = str(value).lower() if isinstance(value, bool) else str(value)
        if env.get(name) != want:
            return f"{name} is {env.get(name)}, the experiment needs {want}"
    if stack.broker != exp.config["broker"]:
        return f"the broker is {stack.broker}, the experiment needs {exp.config['broker']}"
    if stack.config.net_proxy != exp.config["net_proxy"]:
        return f"net_proxy is {stack.config.net_proxy}, the experiment needs {exp.config['net_proxy']}"
    if stack.config.redis_aof != exp.config["redis_aof"]:
        return f"redis_aof is {stack.config.redis_aof}, the experiment needs {exp.config['redis_aof']}"
    return None


def demo_section(stack: Stack | None, console: Console) -> dict[str, Any]:
    """One short worker-kill experiment for ``lab demo``; returns its journal (``verdict`` is pass/fail).

    With a Stack started with ``stack_fields(exp, url)`` (probe module loaded, ledger URL set, the
    experiment's short visibility timeout and AOF) the experiment runs on it (it SIGKILLs one worker and starts a
    replacement, so call it last); otherwise it starts its own ledger and Stack under
    results/chaos-demo-worker-kill-<ts>/."""
    exp = load_experiment(DEMO_EXPERIMENT)
    console.print(f"chaos: {exp.title}")
    reporter = ConsoleReporter(console)
    url = stack.config.extra_env.get(LEDGER_ENV) if stack is not None else None
    usable = stack is not None and bool(url) and PROBE_MODULE in stack.config.extra_task_modules
    if stack is not None and usable and (why := _mismatch(stack, exp)):
        console.print(f"chaos: not using the demo's Stack ({why}); starting one of its own")
        usable = False
    with reporter.live():
        if stack is not None and url and usable:
            ledger = Ledger(url, run=uuid.uuid4().hex[:12])
            try:
                journal = run_on_stack(exp, stack, ledger, reporter)
            finally:
                ledger.close()
            out = stack.run_dir / f"chaos-{exp.name}.json"
            journal["run_dir"] = str(stack.run_dir)
            out.write_text(json.dumps(journal, indent=2))
        else:
            from lab.cli import run_dir_for  # lab.cli registers chaos' CLI: import lazily

            journal = run_experiment(exp, run_dir_for(f"chaos-{exp.name}"), reporter)
    console.print(verdict_table(journal))
    return journal
