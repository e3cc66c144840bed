"""Run a scenario: Locust headless as child processes against a Stack (or an existing deployment), live
progress from the run's own Prometheus exporter, then follow every dispatched task to its end and write
``summary.json`` next to Locust's CSV, HTML and JSON.

This module runs in the lab process and never imports locust (gevent monkey-patching): Locust is started as
``python -m locust -f loadtests/locustfile.py``, one process, or a master plus N workers.

    with Stack(stack_config(sc, run_dir / "stack")) as stack:
        summary = run_scenario(sc, run_dir=run_dir, console=console, stack=stack)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import httpx
import psutil
import redis
from celery.states import PENDING, READY_STATES
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from lab.apps import AppTarget
from lab.errors import StackError
from lab.procs import PORT_ATTEMPTS, Proc, free_port, launch_ready, start_on_free_port, wait_until
from lab.profiles import ROOT
from lab.stack import Stack, StackConfig
from loadtests import summary as summ
from loadtests.common.config import Scenario, broker_from_env, get_scenario
from loadtests.common.ledger import read_ledger
from loadtests.common.metrics import TASK
from loadtests.common.timelines import read_states, read_timelines

LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"
CPU_WARN_PERCENT = 90.0
STARTUP_ALLOWANCE_S = 90.0  # imports, workers connecting, cool-down: beyond the scenario's duration
WORKER_REPORT_S = 3.0  # Locust's WORKER_REPORT_INTERVAL
READ_BATCH = 500


class TaskReader(Protocol):
    def read(self, task_ids: Sequence[str]) -> dict[str, tuple[str, dict[str, Any] | None]]: ...

    def close(self) -> None: ...


class RedisReader:
    """Task states from the result backend and timelines from the cache, by pipelined reads."""

    def __init__(self, backend_url: str, cache_url: str) -> None:
        self.backend = redis.Redis.from_url(backend_url, socket_timeout=10, socket_connect_timeout=5)
        self.cache = redis.Redis.from_url(cache_url, socket_timeout=10, socket_connect_timeout=5)

    def read(self, task_ids: Sequence[str]) -> dict[str, tuple[str, dict[str, Any] | None]]:
        out: dict[str, tuple[str, dict[str, Any] | None]] = {}
        for i in range(0, len(task_ids), READ_BATCH):
            chunk = list(task_ids[i : i + READ_BATCH])
            states, tls = read_states(self.backend, chunk), read_timelines(self.cache, chunk)
            out.update({tid: (final_state(states[tid], tls[tid]), tls[tid]) for tid in chunk})
        return out

    def close(self) -> None:
        self.backend.close()
        self.cache.close()


def final_state(stored: str, timeline: dict[str, Any] | None) -> str:
    """The backend's state, or the timeline's when the backend has none: an app with ``task_ignore_result``
    stores no result, and its task still ended."""
    if stored == PENDING and timeline and timeline.get("state") in READY_STATES:
        return str(timeline["state"])
    return stored


class ApiReader:
    """For a deployment reached only over HTTP (``--host``): the API's own status endpoint, a few at a time."""

    def __init__(self, host: str) -> None:
        self.client = httpx.Client(base_url=host, timeout=10)
        self.pool = ThreadPoolExecutor(8, thread_name_prefix="drain")

    def _one(self, tid: str) -> tuple[str, tuple[str, dict[str, Any] | None]]:
        try:
            body = self.client.get(f"/api/v1/tasks/{tid}").json()
        except (httpx.HTTPError, ValueError):
            return tid, ("UNREADABLE", None)
        return tid, (body.get("status", "UNREADABLE"), body.get("timeline"))

    def read(self, task_ids: Sequence[str]) -> dict[str, tuple[str, dict[str, Any] | None]]:
        return dict(self.pool.map(self._one, task_ids))

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()


def check_host(url: str) -> None:
    """An existing deployment must answer HTTP before anything starts; StackError (exit 2) if not."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise StackError(f"--host {url!r} is not a URL: give the API's base URL, e.g. http://127.0.0.1:8000")
    try:
        httpx.get(url.rstrip("/") + "/health", timeout=3)
    except httpx.HTTPError as exc:
        raise StackError(
            f"--host {url} is not reachable ({type(exc).__name__}: {exc}): start that deployment, fix the URL, "
            "or drop --host to let `lab load` start a local stack"
        ) from None


def stack_config(sc: Scenario, run_dir: Path, *, prometheus: bool = False, app: AppTarget | None = None) -> StackConfig:
    """The Stack `lab load` starts for a scenario (its profile, workers, overrides and AI stub knobs).

    ``prometheus``: also the events exporter and Prometheus, which then scrapes the run's Locust metrics as
    job "locust" (see ``run_scenario``), so the "Load test" dashboard has data during the run.
    ``app``: a user's app (its profile is in ``app``): workers only, with lab.probes for the timelines."""
    if app is not None and not app.reference:
        return StackConfig(
            run_dir=run_dir,
            workers=sc.workers,
            api=False,
            smtp=False,
            ai_stub=False,
            probes=True,
            prometheus=prometheus,
            app=app,
        )
    return StackConfig(
        run_dir=run_dir,
        profile=sc.profile,
        workers=sc.workers,
        overrides=dict(sc.overrides),
        ai_latency=sc.ai_latency,
        ai_error_rate=sc.ai_error_rate,
        prometheus=prometheus,
    )


def broker_of(stack: Stack | None, environ: dict[str, str]) -> dict[str, str]:
    if stack is not None:
        s = stack.settings
        return {"broker_url": s.celery_broker_url, "backend_url": s.celery_result_backend, "cache_url": s.cache_url}
    return broker_from_env(environ)


def _scrape(url: str) -> dict[str, float] | None:
    try:
        text = httpx.get(url, timeout=1).text
    except httpx.HTTPError:
        return None
    out = {"users": 0.0, "requests": 0.0, "failures": 0.0, "tasks": 0.0, "task_failures": 0.0}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            is_task = s.labels.get("method") == TASK
            if s.name == "locust_users":
                out["users"] = s.value
            elif s.name == "locust_requests_total":
                out["tasks" if is_task else "requests"] += s.value
            elif s.name == "locust_failures_total":
                out["task_failures" if is_task else "failures"] += s.value
    return out


@dataclasses.dataclass
class LocustRun:
    procs: list[Proc]
    prometheus_url: str
    cpu: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    last_scrape: dict[str, float] | None = None
    load_started: float | None = None
    master_port: int = 0

    @property
    def master(self) -> Proc:
        return self.procs[0]


@dataclasses.dataclass(frozen=True)
class Distribution:
    """Locust processes: ``processes`` local workers (0 and no remote ones: a single process), plus
    ``remote_workers`` that connect from other machines to the master on ``master_bind``:``master_port``."""

    processes: int = 0
    remote_workers: int = 0
    master_bind: str = "127.0.0.1"
    master_port: int | None = None
    prometheus_port: int | None = None  # default: a free port

    @property
    def distributed(self) -> bool:
        return self.processes + self.remote_workers > 0


def _listens_on(proc: Proc, ports: list[int]) -> bool:
    """The process itself listens on every port (a connect would also reach whoever won a race for one)."""
    try:
        conns = psutil.Process(proc.pid).net_connections("tcp")
    except psutil.Error:  # exited: the caller's abort says why
        return False
    return set(ports) <= {c.laddr.port for c in conns if c.status == psutil.CONN_LISTEN}


def _start_locust(sc: Scenario, run_dir: Path, host: str, dist: Distribution, env: dict[str, str]) -> LocustRun:
    processes = dist.processes
    reach = "127.0.0.1" if dist.master_bind in ("0.0.0.0", "*", "127.0.0.1") else dist.master_bind
    (run_dir / "task_ids.tsv").unlink(missing_ok=True)  # the ledger is appended to: start it empty
    common = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--loglevel", "INFO"]
    env = {
        **env,
        "LAB_LOAD_SCENARIO": sc.to_json(),
        "PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        "PYTHONUNBUFFERED": "1",
    }
    name = "locust-master" if dist.distributed else "locust"

    def master_argv(prom_port: int, master_port: int) -> list[str]:
        argv = [
            *common,
            "--headless",
            "--only-summary",
            "-H",
            host,
            "--csv",
            str(run_dir / "locust"),
            "--html",
            str(run_dir / "locust.html"),
            "--json-file",
            str(run_dir / "locust"),  # Locust adds ".json"
            "--stop-timeout",
            f"{sc.stop_timeout_s:g}",
            "--lab-ledger",
            str(run_dir / "task_ids.tsv"),
            "--lab-prometheus-port",
            str(prom_port),
            "--lab-prometheus-bind",
            dist.master_bind,  # where remote workers reach the master, Prometheus reaches its metrics
        ]
        if dist.distributed:
            argv += [
                "--master",
                "--master-bind-host",
                dist.master_bind,
                "--master-bind-port",
                str(master_port),
                "--expect-workers",
                str(processes + dist.remote_workers),
                "--expect-workers-max-wait",
                "120" if dist.remote_workers else "60",
            ]
        return argv

    def launch(ports: tuple[int, int]) -> Proc:
        # Ready once its ports are bound: a port lost to a race fails the master ("Address already in use"),
        # and start_on_free_port picks others, before any worker is pointed at it.
        prom_port, master_port = ports
        proc = Proc(name, master_argv(prom_port, master_port), env, run_dir / "locust-master.log", cwd=ROOT)
        bound = [prom_port, master_port] if dist.distributed else [prom_port]
        return launch_ready(
            proc,
            lambda: _listens_on(proc, bound),
            timeout=60,
            what=f"{name} listening on {bound}",
        )

    fixed = dist.prometheus_port is not None and (dist.master_port is not None or not dist.distributed)

    def pick() -> tuple[int, int]:
        return dist.prometheus_port or free_port(), dist.master_port or free_port()

    master, (prom_port, master_port) = start_on_free_port(name, launch, pick, attempts=1 if fixed else PORT_ATTEMPTS)
    procs = [master]
    run = LocustRun(procs, f"http://{reach}:{prom_port}/metrics", master_port=master_port)
    try:
        for i in range(processes):
            argv = [*common, "--worker", "--master-host", reach, "--master-port", str(master_port)]
            log = run_dir / f"locust-worker-{i + 1}.log"
            procs.append(Proc(f"locust-worker-{i + 1}", argv, env, log, cwd=ROOT).start())
    except BaseException:
        _stop(run)
        raise
    return run


def _register_with_prometheus(stack: Stack | None, run: LocustRun, console: Console) -> str | None:
    """Have the Stack's own Prometheus (if it runs one) scrape this run's Locust metrics as job "locust",
    the job the "Load test" dashboard selects. Returns that Prometheus' URL, or None."""
    if stack is None or "prometheus" not in stack.urls:
        return None
    stack.scrape("locust", run.prometheus_url)
    console.print(
        f'Prometheus {stack.urls["prometheus"]} scrapes Locust ({run.prometheus_url}) as job "locust"',
        highlight=False,
    )
    return stack.urls["prometheus"]


def _stop(run: LocustRun) -> None:
    for p in reversed(run.procs):
        p.stop(timeout=15)


def _watch(run: LocustRun, sc: Scenario, console: Console) -> None:
    """Until the master exits: progress from the exporter, CPU of every Locust process, a hard deadline."""
    ps = {p.name: psutil.Process(p.pid) for p in run.procs}
    for proc in ps.values():
        proc.cpu_percent(None)
    run.cpu = {name: [] for name in ps}
    deadline = time.monotonic() + sc.duration_s + sc.stop_timeout_s + STARTUP_ALLOWANCE_S
    columns = [TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task(f"load {sc.name}: starting locust", total=sc.duration_s)
        while not run.master.wait(1.0):
            if time.monotonic() > deadline:
                raise StackError(f"locust did not finish in time; see {run.master.log_path}:\n{run.master.log_tail()}")
            scrape = _scrape(run.prometheus_url)
            if scrape is not None:
                run.last_scrape = scrape
                if scrape["users"] > 0 and run.load_started is None:
                    run.load_started = time.monotonic()
            if run.load_started is not None:
                for name, proc in ps.items():
                    with contextlib.suppress(psutil.NoSuchProcess):
                        run.cpu[name].append(proc.cpu_percent(None))
            s = run.last_scrape or {}
            elapsed = time.monotonic() - run.load_started if run.load_started else 0.0
            phase = "running" if elapsed < sc.duration_s else "stopping users"
            progress.update(
                bar,
                completed=min(elapsed, sc.duration_s),
                description=(
                    f"load {sc.name} ({phase}): {s.get('users', 0):.0f} users, {s.get('requests', 0):.0f} requests "
                    f"({s.get('failures', 0):.0f} failed), {s.get('tasks', 0):.0f} tasks followed to the end"
                ),
            )
    for worker in run.procs[1:]:
        worker.wait(15)


def _drain(reader: TaskReader, ledger: dict[str, str], sc: Scenario, console: Console) -> dict[str, summ.TaskRecord]:
    """Follow every dispatched task to a final state (or the scenario's drain deadline)."""
    records: dict[str, summ.TaskRecord] = {}

    def pending() -> list[str]:
        # A user's task gets its timeline just after its result (lab.probes): wait for both.
        return [
            tid
            for tid in ledger
            if tid not in records or not records[tid].final or (sc.app and records[tid].timeline is None)
        ]

    def step() -> bool:
        todo = pending()
        for tid, (status, tl) in reader.read(todo).items():
            records[tid] = summ.TaskRecord(ledger[tid], status, tl)
        left = len(pending())
        progress.update(bar, completed=len(ledger) - left)
        return left == 0

    columns = [TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:.0f}/{task.total:.0f}")]
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task("tasks dispatched by the load, finished", total=len(ledger))
        # Tasks still unfinished at the deadline are reported (max_unfinished_tasks), with their last state.
        with contextlib.suppress(StackError):
            wait_until(step, timeout=sc.drain_s, what="every dispatched task to finish", interval=0.5)
    return records


def _held_by_broker(
    stack: Stack, reader: TaskReader, records: dict[str, summ.TaskRecord], ledger: dict[str, str]
) -> int:
    """How many dispatched tasks not finished after the drain the broker still holds (queued, or unacked by a
    worker): a backlog built on purpose, not lost. (With --host there is no broker to ask: the drain then
    waits for every task to finish, as drain = "finish" does.)"""
    view = stack.broker_view()
    # Queued first, then held: a message a worker fetches in between shows up in the second read.
    there = view.queued_ids()
    there |= {h.task_id for h in view.held()}
    unfinished = [tid for tid in ledger if not (tid in records and records[tid].final)]
    # One that is in neither may have finished after the drain's last read: read it again before calling it lost.
    for tid, (status, tl) in reader.read([t for t in unfinished if t not in there]).items():
        records[tid] = summ.TaskRecord(ledger[tid], status, tl)
    return sum(1 for tid in unfinished if tid in there and not (tid in records and records[tid].final))


def _cpu_summary(run: LocustRun) -> tuple[float, dict[str, Any]]:
    per = {
        name: {"mean": round(sum(v) / len(v), 1), "max": round(max(v), 1)} if v else {"mean": None, "max": None}
        for name, v in run.cpu.items()
    }
    means = [p["mean"] for p in per.values() if p["mean"] is not None]
    return (max(means) if means else 0.0), per


def run_scenario(
    sc: Scenario,
    *,
    run_dir: Path,
    console: Console,
    stack: Stack | None = None,
    host: str | None = None,
    processes: int = 0,
    config: str | None = None,
    dist: Distribution | None = None,
    during_load: Callable[[LocustRun], object] | None = None,
) -> dict[str, Any]:
    """Run one scenario and return its summary (also written to ``run_dir/summary.json``).

    Give ``stack`` (a running Stack) or ``host`` (an existing deployment's API URL). ``processes``: Locust
    master + that many local workers; ``dist`` also allows workers on other machines. When ``stack`` runs
    Prometheus, it scrapes the run's Locust metrics as job "locust". ``during_load(run)`` runs in a thread
    while Locust runs (e.g. to check what Prometheus scraped before the endpoint goes away with the master);
    its exception, if any, is raised once Locust stopped."""
    dist = dist or Distribution(processes=processes)
    if (stack is None) == (host is None):
        raise ValueError("give exactly one of stack= or host=")
    run_dir.mkdir(parents=True, exist_ok=True)
    environ = dict(stack.env if stack is not None else os.environ)
    broker = broker_of(stack, environ)
    if sc.uses_broker and not broker:
        raise StackError(
            f"scenario {sc.name} publishes straight to the broker: with --host also set CELERY_BROKER_URL, "
            "CELERY_RESULT_BACKEND and CACHE_URL to that deployment's"
        )
    sc = dataclasses.replace(sc, broker=broker)
    if stack is not None:
        # A user's app has no API: Locust's host is then only a label, the broker it publishes to.
        target = stack.urls["api"] if "api" in stack.urls else broker["broker_url"]
    else:
        target = str(host).rstrip("/")
    (run_dir / "scenario.json").write_text(json.dumps(json.loads(sc.to_json()), indent=2))
    console.print(
        f"load {sc.name}: {sc.users} users, shape {sc.shape}, {sc.duration_s:g}s against {target}"
        + (f", locust master + {dist.processes} local workers" if dist.distributed else "")
        + f"; results in {run_dir}",
        highlight=False,
    )
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    run = _start_locust(sc, run_dir, target, dist, environ)
    scraped_by = _register_with_prometheus(stack, run, console)
    if dist.remote_workers:
        console.print(
            f"waiting for {dist.remote_workers} remote worker(s); on each machine run:\n  .venv/bin/locust -f "
            f"loadtests/locustfile.py --worker --master-host <this machine> --master-port {run.master_port}",
            highlight=False,
            soft_wrap=True,
        )
    # The hook's thread ends on its own deadlines (it should abort on run.master.died); leaving the pool
    # waits for it, so it never outlives the run.
    with ThreadPoolExecutor(1, thread_name_prefix="during-load") as pool:
        hook = pool.submit(during_load, run) if during_load is not None else None
        try:
            _watch(run, sc, console)
        finally:
            _stop(run)
    if hook is not None:
        hook.result()
    json_path = run_dir / "locust.json"
    if not json_path.is_file():
        raise StackError(
            f"locust exited with code {run.master.returncode} and wrote no results; {run.master.log_path}:\n"
            f"{run.master.log_tail()}"
        )
    entries = json.loads(json_path.read_text())
    ledger = read_ledger(run_dir / "task_ids.tsv")
    reader: TaskReader = RedisReader(broker["backend_url"], broker["cache_url"]) if broker else ApiReader(target)
    try:
        records = _drain(reader, ledger, sc, console)
        held = _held_by_broker(stack, reader, records, ledger) if sc.drain == "broker" and stack is not None else None
    finally:
        reader.close()
    cpu, cpu_per = _cpu_summary(run)
    warnings = []
    if cpu > CPU_WARN_PERCENT:
        warnings.append(
            f"the load generator was busy ({cpu:.0f} % of a core in its busiest process): it may have been the "
            "bottleneck; use --processes N"
        )
    summary = summ.build(
        scenario=sc,
        config=config or _config_name(stack),
        entries=entries,
        records=records,
        held=held,
        extra={
            "host": target,
            "app": stack.config.app.describe() if stack is not None else None,
            "started_at": started_at,
            "processes": dist.processes,
            "remote_workers": dist.remote_workers,
            "loadgen_cpu_percent": cpu,
            "loadgen_cpu": cpu_per,
            "warnings": warnings,
            "prometheus": {
                "port": int(urlparse(run.prometheus_url).port or 0),
                "url": run.prometheus_url,
                "scraped_by": scraped_by,  # the Stack's Prometheus (job "locust"), or None
            },
            "prometheus_last_scrape": run.last_scrape,
            "locust_exit_code": run.master.returncode,
            "run_dir": str(run_dir),
            "files": {
                "summary": str(run_dir / "summary.json"),
                "locust_json": str(json_path),
                "html": str(run_dir / "locust.html"),
                "csv_stats": str(run_dir / "locust_stats.csv"),
                "task_ids": str(run_dir / "task_ids.tsv"),
                "logs": [str(p.log_path) for p in run.procs],
            },
        },
    )
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print_summary(summary, console)
    return summary


def _config_name(stack: Stack | None) -> str:
    if stack is None:
        return "external"
    target = stack.config.app
    return stack.config.profile if target.reference else (target.overlay_source or "the app's own settings")


def print_summary(summary: dict[str, Any], console: Console) -> None:
    table = Table(title=f"load {summary['scenario']}: requests and task latencies")
    for col in ("type", "name", "count", "failed", "p50 ms", "p95 ms", "p99 ms"):
        table.add_column(col, justify="left" if col in ("type", "name") else "right")
    for row in summary["by_request"]:
        cells = (row["type"], row["name"], row["requests"], row["failures"], row["p50"], row["p95"], row["p99"])
        # Escaped: a request name such as /api/v1/users/[id]/export is text, not rich markup ([id] would vanish).
        table.add_row(*(escape(str(c)) for c in cells))
    console.print(table)
    t, h, k = summary["tasks"], summary["http_latency_ms"], summary["task_latency_ms"]
    console.print(
        f"{summary['requests']} requests ({summary['failures']} failed) in {summary['duration_s']:g}s = "
        f"{summary['rps']} req/s; HTTP p50/p95/p99 {h['p50']}/{h['p95']}/{h['p99']} ms\n"
        f"tasks: {t['sent']} dispatched, {t['succeeded']} succeeded, {t['failed']} failed, {t['retried']} retried, "
        f"{t['unfinished']} unfinished; end-to-end p50/p95/p99 {k['p50']}/{k['p95']}/{k['p99']} ms "
        f"(queue wait p95 {summary['queue_wait_ms']['p95']} ms)\n"
        f"load generator CPU: {summary['loadgen_cpu_percent']} % of a core (busiest process)",
        highlight=False,
    )
    for w in summary["warnings"]:
        console.print(f"[yellow]warning:[/] {w}", highlight=False)
    for v in summary["thresholds"]:
        mark = "[green]ok  [/]" if v["ok"] else "[red]FAIL[/]"
        console.print(f"  {mark} {escape(v['message'])}", highlight=False)
    verdict = "[green]PASS[/]" if summary["passed"] else "[red]FAIL[/]"
    console.print(f"load {summary['scenario']}: {verdict}; summary in {summary['files']['summary']}")


def demo_section(stack: Stack, console: Console, duration_s: float = 5.0) -> dict[str, Any]:
    """For ``lab demo``: the smoke scenario for ~5 s against the demo's running Stack; returns its summary."""
    sc = get_scenario("smoke").with_overrides(duration_s=duration_s)
    return run_scenario(sc, run_dir=stack.run_dir / "load-smoke", console=console, stack=stack)
