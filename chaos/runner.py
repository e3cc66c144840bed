"""Run one experiment: ledger + Stack up, load, faults on triggers, rollbacks, drain, check, journal.

``run_experiment`` starts everything itself (a ledger redis-server, then a Stack whose workers load
``lab.probes`` and know the ledger's URL) and stops it all, on failure too. ``run_on_stack`` does the
experiment proper on a Stack someone else started with ``stack_fields``; ``demo_section`` is what
``lab demo`` calls.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import redis
from celery import states
from kombu.exceptions import OperationalError
from rich.console import Console

from chaos.checker import check
from chaos.experiment import Experiment, load_experiment, task_durations
from chaos.faults import FAULTS, ROLLBACKS, FaultContext, FaultRecord, wait_for_trigger
from chaos.report import ConsoleReporter, QuietReporter, Reporter, verdict_table
from lab.apps import AppTarget
from lab.errors import BrokerUnreadable, StackError
from lab.exporter import emit_fault
from lab.ledger import LEDGER_ENV, Ledger, LedgerServer
from lab.probes import ADDRESS_DOMAIN, Probe, needs_smtp, probe_task, send_probe
from lab.procs import wait_until
from lab.rundirs import run_dir_for
from lab.stack import Stack, StackConfig
from lab.witness import measure, probe_witness

DEMO_EXPERIMENT = "demo-worker-kill"
PUBLISH_BATCH = 100


def stack_extras(ledger_url: str) -> dict[str, Any]:
    """The StackConfig fields a Stack needs for chaos experiments to run on it."""
    return {"extra_env": {LEDGER_ENV: ledger_url}, "probes": True}


def stack_fields(exp: Experiment, ledger_url: str, app: AppTarget | None = None) -> dict[str, Any]:
    """StackConfig fields for a Stack that can host ``exp`` (merge ``overrides``/``extra_env`` with your own).
    The experiment's overrides are reference Settings: a user's ``app`` runs with its own settings instead."""
    app = app or AppTarget()
    raw = exp.config["overrides"] if app.reference else {}
    overrides = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in raw.items()}
    cfg = exp.config
    fields = {k: cfg[k] for k in ("redis_aof", "broker", "net_proxy", "separate_backend")}
    return {"overrides": overrides, **fields, **stack_extras(ledger_url), "app": app}


def stack_config(
    exp: Experiment, run_dir: Path, ledger_url: str, profile: str | None = None, app: AppTarget | None = None
) -> StackConfig:
    """With a user's ``app`` the profile is its overlay (in ``app``); the Stack's own Settings stay the defaults."""
    cfg = exp.config
    reference = app is None or app.reference
    return StackConfig(
        run_dir=run_dir,
        profile=(profile or cfg["profile"]) if reference else "reference",
        workers=cfg["workers"],
        api=False,
        smtp=needs_smtp(cfg["probe"]),
        ai_stub=False,
        **stack_fields(exp, ledger_url, app),
    )


# --- broker and backend state -----------------------------------------------------------------------------
def broker_leftovers(stack: Stack) -> tuple[set[str], dict[str, float | None], str | None]:
    """Task ids still queued, ids held unacknowledged (with when each would be restored, where the broker
    says), and an error string when the broker cannot be read (then both are empty and mean nothing)."""
    view = stack.broker_view()
    try:
        queued = view.queued_ids()
        held = {h.task_id: h.restore_at for h in view.held()}
    except BrokerUnreadable as exc:
        return set(), {}, str(exc)
    return queued, held, None


def restore_lock(stack: Stack) -> float | None:
    """Seconds left on the broker's restore-sweep lock when a dead worker left it held (why parked messages
    are overdue); None when nobody holds it or the broker cannot be read."""
    try:
        return stack.broker_view().restore_lock_s()
    except BrokerUnreadable:
        return None


def backend_success(stack: Stack, ids: list[str]) -> int | None:
    """Independent count: ids whose result in the result backend is SUCCESS (Celery's own backend API)."""
    backend = stack.celery.backend
    try:
        return sum(backend.get_task_meta(i).get("status") == states.SUCCESS for i in ids)
    except (redis.RedisError, OperationalError, OSError):
        return None


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

    Either way a run with faults fails when they hit no in-flight work. expected "no-loss": pass iff every
    probe holds. expected "loss" (a control): pass iff some task is gone for good because of a fault (hit by
    it, or held by the broker or a worker when it struck; not merely parked unacked) and nothing unexpected
    ran; the probes are still reported (the loss probe must fail)."""
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
    ledger, hit = journal["ledger"], journal.get("hit") or {}
    struck = bool(journal["faults"])
    if struck and not (hit.get("count") or hit.get("in_flight_at_fault")):
        # A fault that landed while nothing ran, and took nothing from a worker, tested nothing.
        return results, "fail", "the fault hit no in-flight work: the run tested nothing (trigger it later?)"
    if exp_data["expected"] == "loss":
        caused = int(hit.get("caused_gone") or 0)
        ok = caused > 0 and ledger["unexpected"] == 0
        if ok:
            reason = f"control: {caused} lost for good, taken by the fault"
        elif ledger["lost"]:
            reason = (
                f"control: {ledger['lost']} lost but none gone for good because of the fault "
                f"({ledger.get('parked', 0)} parked unacked, {ledger.get('queued', 0)} still queued)"
            )
        else:
            reason = "control: expected loss, the ledger found none"
    else:
        failed = [r["name"] for r in results if not r["met"]]
        ok = not failed
        reason = "steady state held" if ok else f"steady state violated: {', '.join(failed)}"
    return results, "pass" if ok else "fail", reason


# --- the run ----------------------------------------------------------------------------------------------
def _publish(
    stack: Stack, ledger: Ledger, durations: list[float], reporter: Reporter, probe: Probe = "sleep"
) -> list[str]:
    total = len(durations)
    ids = [str(uuid.uuid4()) for _ in range(total)]
    app = stack.celery
    with app.producer_or_acquire() as producer:
        for start in range(0, total, PUBLISH_BATCH):
            batch = ids[start : start + PUBLISH_BATCH]
            ledger.mark_sent(batch)  # before publishing: a message can never run unrecorded as sent
            for index, task_id in enumerate(batch, start):
                duration = durations[index]
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


def _settle(stack: Stack, ledger: Ledger, horizon: float) -> tuple[bool, str | None]:
    """After the last id completed, let redelivered copies still queued or running finish (they are duplicates).

    (False, None) when the broker never went quiet within the horizon (e.g. a visibility timeout shorter than
    the task keeps restoring copies): the journal then counts the duplicates seen so far. (False, why) when
    the broker could not be read at the end: unknown, never taken for quiet."""
    view = stack.broker_view()

    def running() -> bool:
        # A start without a finish on a dead pid is an interrupted execution, not one still running.
        return any(psutil.pid_exists(e.pid) for e in ledger.in_flight())

    try:
        wait_until(
            lambda: view.quiet() and not running(),
            timeout=horizon,
            what="a quiet broker",
            interval=0.2,
            retry_on=(BrokerUnreadable,),
        )
    except StackError as exc:
        unreadable = "BrokerUnreadable" in str(exc)
        return False, (f"broker unreadable while settling: {exc}" if unreadable else None)
    return True, None


def run_rollbacks(ctx: FaultContext, actions: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Each rollback with its own provider spec (e.g. ensure_workers' ``count``); a failed one is reported and
    the others still run."""
    done = []
    for action in actions:
        provider = action["provider"]
        try:
            done.append({"name": action["name"], "result": ROLLBACKS[provider["kind"]](ctx, provider)})
        except Exception as exc:
            done.append({"name": action["name"], "result": f"failed: {exc}"})
    return done


def run_on_stack(
    exp: Experiment, stack: Stack, ledger: Ledger, reporter: Reporter | None = None, *, profile: str | None = None
) -> dict[str, Any]:
    """The experiment proper, on a Stack started with ``stack_fields(exp, ledger.url)``. Returns the journal."""
    reporter = reporter or QuietReporter()
    cfg = exp.config
    total, duration = int(cfg["tasks"]), cfg["task_duration_s"]
    durations = task_durations(duration, total, ledger.run)
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
                spread = f"{min(durations):g}-{max(durations):g}" if isinstance(duration, dict) else f"{duration:g}"
                what = f"of {spread}s" if cfg["probe"] == "sleep" else f"({probe_task(cfg['probe'])}, the app's own)"
                reporter.log(f"publishing {total} probe tasks {what}")
                ids = _publish(stack, ledger, durations, reporter, cfg["probe"])
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
        rollbacks = run_rollbacks(ctx, exp.data.get("rollbacks", []))
    horizon = float(cfg["horizon_s"])
    drain_state = _drain(ledger, total, horizon, deadline_at, reporter)
    drain_s = round(time.monotonic() - m0, 3)
    settled, settle_error = _settle(stack, ledger, horizon) if drain_state == "drained" else (False, None)
    data = ledger.read()
    queued, unacked, broker_error = broker_leftovers(stack)
    named = [str(r.detail["bait"]) for r in records if r.detail.get("bait")]  # the message a fault caught
    report = check(data.sent, data.starts, data.finishes, [r.at for r in records], queued, unacked, named)
    parked = [unacked[i] for i in report.lost_ids if i in unacked and i not in queued]
    success = backend_success(stack, ids)
    s, target, app_settings = stack.settings, stack.config.app, stack.app_settings()
    journal: dict[str, Any] = {
        "experiment": exp.name,
        "title": exp.title,
        "broker": stack.broker,
        "app": target.describe(),
        "config": {
            "profile": (profile or stack.config.profile) if target.reference else target.overlay_source,
            "overrides": cfg["overrides"] if target.reference else {},
            "overrides_not_applied": {} if target.reference else cfg["overrides"],
            "workers": cfg["workers"],
            "concurrency": app_settings["concurrency"],
            "pool": app_settings["pool"],
            "acks_late": app_settings["acks_late"],
            "reject_on_worker_lost": app_settings["reject_on_worker_lost"],
            "prefetch_multiplier": app_settings["prefetch_multiplier"],
            "visibility_timeout_s": app_settings["visibility_timeout_s"],
            "unacked_restore_interval_s": s.celery_unacked_restore_interval if target.reference else None,
            "unacked_restore_throttle": s.celery_unacked_restore_throttle if target.reference else None,
            "redis_aof": stack.config.redis_aof,
            "separate_backend": stack.config.separate_backend,
            "tasks": total,
            "probe": cfg["probe"],
            "task": probe_task(cfg["probe"]),
            "task_duration_s": duration,
            "horizon_s": horizon,
        },
        "faults": faults,
        "ledger": report.ledger_summary(),
        "redelivery_s": report.redelivery_s(),
        "leftovers": report.leftovers,
        "hit": report.hit_summary(),
        # Lost ids the broker still holds unacked: back when the visibility timeout restores them, not gone.
        "parked": {
            "count": len(parked),
            "back_in_s": round(max(parked) - time.time(), 1) if parked and None not in parked else None,
            "restore_lock_s": restore_lock(stack) if parked else None,
        },
        "expected": exp.expected,
        "verdict": "fail",
        "drain": drain_state,
        "drain_s": drain_s,
        "settled": settled,
        "backend": {"success": success, "agrees": success == report.completed},
        "sink": sink_count(stack, ids, report.completed) if needs_smtp(cfg["probe"]) else None,
        "witness": measure(spec, target, ids, report.completed) if (spec := probe_witness(cfg["probe"])) else None,
        "broker_error": broker_error or settle_error,
        "rollbacks": rollbacks,
        "details": report.details(),
        "started_at": started_at,
        "duration_s": round(time.monotonic() - m0, 3),
    }
    journal["hypothesis"], journal["verdict"], journal["reason"] = evaluate(journal, exp.data)
    return journal


def run_experiment(
    exp: Experiment,
    run_dir: Path,
    reporter: Reporter | None = None,
    *,
    profile: str | None = None,
    app: AppTarget | None = None,
) -> dict[str, Any]:
    """Start a ledger and a Stack for ``exp``, run it, stop everything; write and return the journal."""
    reporter = reporter or QuietReporter()
    run_dir.mkdir(parents=True, exist_ok=True)
    t_wall = time.monotonic()
    with LedgerServer(run_dir / "ledger") as server:
        ledger = Ledger(server.url, run=uuid.uuid4().hex[:12])
        try:
            reporter.progress(0, int(exp.config["tasks"]), "starting the stack")
            with Stack(stack_config(exp, run_dir / "stack", server.url, profile, app)) as stack:
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


def stack_key(exp: Experiment, profile: str | None = None, app: AppTarget | None = None) -> str:
    """Experiments with equal keys can share one Stack (same app and profile, workers, overrides,
    persistence). On a user's app the experiments' overrides do not apply, so they do not split the Stacks."""
    cfg = exp.config
    reference = app is None or app.reference
    overrides = cfg["overrides"] if reference else {}
    key = [profile or cfg["profile"], cfg["workers"], overrides, cfg["redis_aof"], cfg["broker"]]
    key += [needs_smtp(cfg["probe"]), cfg["net_proxy"], cfg["separate_backend"]]
    key.append(None if app is None or app.reference else app.key)
    return json.dumps(key, sort_keys=True)


# One app for every experiment of a suite, or the app each experiment runs on (the matrix's configs of a
# user's app are overlays of it: a Stack per config).
AppChoice = AppTarget | Callable[[Experiment], AppTarget | None] | None


def _app_for(app: AppChoice, exp: Experiment) -> AppTarget | None:
    return app(exp) if callable(app) else app


def run_suite(
    experiments: list[Experiment],
    run_dir: Path,
    reporter: Reporter | None = None,
    *,
    profile: str | None = None,
    after: Callable[[Stack | None, Experiment, dict[str, Any]], None] | None = None,
    app: AppChoice = None,
) -> list[dict[str, Any]]:
    """Run experiments, one Stack per stack_key (groups in order of first appearance).

    Faults leave a Stack as the rollbacks restore it (workers replaced, broker running), and each experiment
    has its own ledger namespace, so sharing saves a Stack start per experiment without mixing evidence. An
    experiment that errors (whatever the exception: a fault's HTTP call, a broker still restarting) is
    recorded as a fail with the error, and the suite goes on. ``after(stack, exp, journal)`` runs once each
    journal is written (the Stack is None when it never started): the matrix's progress and reset."""
    done = after or (lambda _stack, _exp, _journal: None)
    reporter = reporter or QuietReporter()
    run_dir.mkdir(parents=True, exist_ok=True)
    journals: list[dict[str, Any]] = []
    by_key: dict[str, list[Experiment]] = {}
    for exp in experiments:
        by_key.setdefault(stack_key(exp, profile, _app_for(app, exp)), []).append(exp)
    groups = list(by_key.values())
    for n, group in enumerate(groups, 1):
        group_dir = run_dir / f"stack{n}"
        with LedgerServer(group_dir / "ledger") as server:
            try:
                config = stack_config(group[0], group_dir / "stack", server.url, profile, _app_for(app, group[0]))
                stack = Stack(config).start()
            except StackError as exc:
                for exp in group:
                    journals.append(_error_journal(exp, f"stack did not start: {exc}"))
                    done(None, exp, journals[-1])
                continue
            try:
                for exp in group:
                    reporter.log(f"[bold]{exp.name}[/]: {exp.title}")
                    ledger = Ledger(server.url, run=uuid.uuid4().hex[:12])
                    t_wall = time.monotonic()
                    try:
                        journal = run_on_stack(exp, stack, ledger, reporter, profile=profile)
                    except Exception as exc:  # recorded in the journal and failing the suite: nothing is hidden
                        journal = _error_journal(exp, f"{type(exc).__name__}: {exc}")
                    finally:
                        ledger.close()
                    journal["wall_s"] = round(time.monotonic() - t_wall, 3)
                    journal["run_dir"] = str(run_dir / exp.name)
                    (run_dir / exp.name).mkdir(parents=True, exist_ok=True)
                    (run_dir / exp.name / "journal.json").write_text(json.dumps(journal, indent=2))
                    reporter.log(f"{exp.name}: {journal['verdict']} ({journal['reason']})")
                    journals.append(journal)
                    done(stack, exp, journal)
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
    if stack.config.separate_backend != exp.config["separate_backend"]:
        return f"separate_backend is {stack.config.separate_backend}, the experiment needs the opposite"
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
    usable = stack is not None and bool(url) and stack.config.probes
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
            journal = run_experiment(exp, run_dir_for(f"chaos-{exp.name}"), reporter)
    console.print(verdict_table(journal))
    return journal
