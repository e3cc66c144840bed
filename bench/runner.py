"""Run A/B(/C...) benchmarks: interleaved repetitions, each on a fresh Stack, measured from the outside.

One repetition ("run") of one side:

1. A fresh Stack: its own redis-server and ``--workers`` celery workers with the side's profile, plus the
   SMTP sink / AI stub only if the workload needs them. No API: tasks are published from here.
2. Warm-up: a few tasks per pool slot, so the pool processes exist, have imported everything and are connected.
3. Throughput: publish a backlog of ``tasks`` to a queue no worker consumes yet, then ``add_consumer`` it and
   time the drain, from the release to the last task's own ``finished`` stamp. Over that window (publish +
   drain): worker CPU from /proc (main process and pool children), broker CPU and INFO commandstats from
   Redis.
4. Latency: publish at a steady rate below saturation (the same rate for every run of the bench) and read
   each task's queue wait, runtime and end-to-end time from its timeline (app/core/timeline.py).
5. Ceiling: redis-benchmark's LPUSH against the same redis-server, after the measured phases.

Sides run interleaved and the first side of a round alternates (AB, BA, AB, ...), so drift of the machine and
any first/second-position effect fall on both sides alike. A run during which other processes used more than
``disturbance_limit`` % of the machine's CPU is flagged and re-run (up to ``reruns`` times).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import platform
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil
import redis

from app.core.config import Settings
from app.core.timeline import read_timeline
from bench.figures import compare_runs
from bench.stats import ALPHA
from bench.workloads import Workload
from lab.errors import ProfileError, SettingsInvalid, StackError
from lab.probes import BENCH_KNOBS
from lab.procs import require_binary, wait_until
from lab.profiles import load_profile, resolve
from lab.stack import Stack, StackConfig
from lab.stats import percentile

MIN_REPEAT = 3
KNOBS = BENCH_KNOBS
BACKLOG_QUEUE = "bench.backlog"
RESULTS_DB, CACHE_DB, CEILING_DB = 1, 2, 9
# Commands the harness itself sends while measuring; not part of a task's cost.
HARNESS_COMMANDS = {"info", "dbsize", "exists", "ping", "client|setinfo", "hello"}
CEILING_REQUESTS = 10000
CEILING_CLIENTS = 8


class WorkerDied(StackError):
    """A worker died during a run: the run says nothing about its side and is discarded."""


# Progress callback: (message, runs finished so far).
Progress = Callable[[str, int], None]


@dataclass(frozen=True)
class Side:
    label: str
    spec: str
    profile: str
    overrides: dict[str, str] = field(default_factory=dict)  # Settings env vars beating the profile
    knobs: dict[str, str] = field(default_factory=dict)  # BENCH_* env vars for the bench tasks

    @property
    def bare(self) -> bool:
        return self.knobs.get("BENCH_BARE") == "1"

    def describe(self) -> dict[str, Any]:
        return {"label": self.label, "spec": self.spec, "profile": self.profile, "overrides": self.overrides,
                "knobs": self.knobs}  # fmt: skip


def parse_side(spec: str, label: str | None = None) -> Side:
    """``PROFILE`` or ``PROFILE:NAME=VALUE,NAME=VALUE`` (Settings env vars, or BENCH_* knobs)."""
    profile, _, rest = spec.partition(":")
    if not profile:
        raise ProfileError(f"bad side {spec!r}: expected PROFILE or PROFILE:NAME=VALUE,... (e.g. reference)")
    load_profile(profile)
    overrides: dict[str, str] = {}
    knobs: dict[str, str] = {}
    known = set(Settings.env_names())
    for item in filter(None, rest.split(",")):
        name, eq, value = item.partition("=")
        name = name.strip().upper()
        if not eq:
            raise ProfileError(f"bad side {spec!r}: {item!r} is not NAME=VALUE")
        if name in KNOBS:
            knobs[name] = value.strip()
        elif name in known:
            overrides[name] = value.strip()
        else:
            raise ProfileError(
                f"bad side {spec!r}: {name} is neither a setting (see app/core/config.py) nor one of {', '.join(KNOBS)}"
            )
    for name in ("BENCH_SLEEP_MS", "BENCH_CPU_ITERS"):
        if name in knobs:
            try:
                if float(knobs[name]) < 0:
                    raise ValueError
            except ValueError:
                raise ProfileError(f"bad side {spec!r}: {name} must be a number >= 0") from None
    settings = resolve(profile, {}, overrides)  # raises SettingsInvalid with one line
    if knobs.get("BENCH_BARE") == "1" and settings.celery_task_ignore_result:
        raise ProfileError(
            f"bad side {spec!r}: BENCH_BARE=1 finds finished tasks through the result backend; "
            "it needs CELERY_TASK_IGNORE_RESULT=false"
        )
    return Side(label or spec, spec, profile, overrides, knobs)


@dataclass
class BenchConfig:
    sides: list[Side]
    workload: Workload
    repeat: int = 5
    tasks: int | None = None
    rate: float | None = None  # latency phase rate; default: 40 % of the first run's throughput
    latency_s: float = 3.0
    reruns: int = 1
    disturbance_limit: float = 10.0
    alpha: float = ALPHA
    workers: int = 1

    def validate(self) -> None:
        if len(self.sides) < 2:
            raise ProfileError("a benchmark needs at least two sides (A and B)")
        if self.repeat < MIN_REPEAT:
            raise ProfileError(
                f"--repeat {self.repeat} is too few: with fewer than {MIN_REPEAT} repetitions per side no "
                f"confidence interval or test means anything; use --repeat {MIN_REPEAT} or more (default 5)"
            )
        if self.tasks is not None and self.tasks < 50:
            raise ProfileError(f"--tasks {self.tasks} is too few for a throughput figure; use 50 or more")
        if self.rate is not None and self.rate <= 0:
            raise ProfileError("--rate must be positive (tasks per second)")

    @property
    def backlog(self) -> int:
        return self.tasks or self.workload.default_tasks


# --- measuring from the outside --------------------------------------------------------------------------


def _tree(pid: int) -> list[psutil.Process]:
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


def _peak_rss_mb(procs: Iterable[psutil.Process]) -> float:
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
        return [p for pid in self.stack.worker_pids().values() for p in _tree(pid)]

    def start(self) -> Window:
        self.t0 = time.monotonic()
        self.cmds0 = _commandstats(self.broker)
        self.redis0 = _redis_cpu(self.broker)
        self.workers0 = _cpu_seconds(self._workers())
        self.ours0 = _cpu_seconds(_tree(os.getpid()))
        self.machine0 = _machine_busy()
        return self

    def stop(self) -> dict[str, Any]:
        machine = _machine_busy() - self.machine0
        ours = _delta(self.ours0, _cpu_seconds(_tree(os.getpid())))
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


# --- one run ---------------------------------------------------------------------------------------------


class Run:
    def __init__(
        self, cfg: BenchConfig, side: Side, run_dir: Path, rate: float | None, say: Callable[[str], None]
    ) -> None:
        self.cfg, self.side, self.run_dir, self.rate, self.say = cfg, side, run_dir, rate, say
        self.calls = cfg.workload.calls(bare=side.bare)

    def stack_config(self) -> StackConfig:
        return StackConfig(
            run_dir=self.run_dir,
            profile=self.side.profile,
            workers=self.cfg.workers,
            overrides=dict(self.side.overrides),
            environ={},  # the caller's CELERY_* exports would override both sides alike and hide the difference
            api=False,
            smtp=self.cfg.workload.smtp,
            ai_stub=self.cfg.workload.ai_stub,
            extra_env=dict(self.side.knobs),
            probes=True,
        )

    def publish(self, stack: Stack, n: int, queue: str | None = None, rate: float | None = None) -> list[str]:
        ids = []
        t0 = time.monotonic()
        for i in range(n):
            if rate:
                # Pacing an open-loop arrival schedule, not waiting for a condition.
                ahead = t0 + i / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            name, args, kwargs = next(self.calls)
            ids.append(stack.celery.send_task(name, args, kwargs, queue=queue).id)
        return ids

    def done_db(self) -> int:
        return RESULTS_DB if self.side.bare else CACHE_DB

    def done_key(self, task_id: str) -> str:
        return f"celery-task-meta-{task_id}" if self.side.bare else f"timeline:{task_id}"

    def wait_done(self, stack: Stack, db: redis.Redis, ids: list[str], baseline: int, what: str) -> list[str]:
        """Wait for every task to leave its trace; returns the ids that did not within the deadline.

        Raises ``WorkerDied`` when a worker died meanwhile: its missing tasks measure the crash, not the side,
        so such a run must be discarded (and re-run), never kept with its losses counted as failures."""
        died = self._worker_died(stack)
        timeout = 120 + 0.05 * len(ids)
        pending = list(ids)

        def all_there() -> bool:
            nonlocal pending
            pipe = db.pipeline(transaction=False)
            for task_id in pending:
                pipe.exists(self.done_key(task_id))
            pending = [t for t, ok in zip(pending, pipe.execute(), strict=True) if not ok]
            return not pending

        for check, limit, interval in (
            (lambda: db.dbsize() >= baseline + len(ids), timeout, 0.05),
            (all_there, 10.0, 0.2),
        ):
            try:
                wait_until(check, timeout=limit, what=what, abort=died, interval=interval)
            except StackError:
                if reason := died():
                    raise WorkerDied(f"{what}: {reason}") from None
        return pending

    @staticmethod
    def _worker_died(stack: Stack) -> Callable[[], str | None]:
        def check() -> str | None:
            return next((r for w in stack.workers.values() if (r := w.proc.died())), None)

        return check

    def records(self, db: redis.Redis, ids: list[str]) -> list[dict[str, Any]]:
        if not self.side.bare:
            return [tl for t in ids if (tl := read_timeline(t, db))]
        out = []
        for raw in db.mget([self.done_key(t) for t in ids]):
            if raw:
                meta = json.loads(raw)
                finished = datetime.fromisoformat(meta["date_done"]).replace(tzinfo=UTC).timestamp()
                out.append({"state": meta["status"], "finished": finished})
        return out

    def execute(self) -> dict[str, Any]:
        with Stack(self.stack_config()) as stack:
            return self._measure(stack)

    def _measure(self, stack: Stack) -> dict[str, Any]:
        broker = stack.redis(0)
        db = stack.redis(self.done_db())
        hosts = [w.hostname for w in stack.workers.values()]
        s = stack.settings
        slots = s.celery_worker_concurrency * self.cfg.workers
        self.say("warm-up")
        warm = self.publish(stack, max(20, 3 * slots))
        if lost := self.wait_done(stack, db, warm, 0, "warm-up tasks"):
            raise StackError(f"{len(lost)} warm-up tasks never finished; see the logs under {self.run_dir}/logs")
        baseline = db.dbsize()

        # Throughput: a backlog nobody consumes yet, then released at once.
        n = self.cfg.backlog
        self.say(f"throughput: publishing {n}")
        window = Window(stack, broker).start()
        ids = self.publish(stack, n, queue=BACKLOG_QUEUE)
        queued = broker.llen(BACKLOG_QUEUE)
        self.say(f"throughput: draining {n}")
        # The workers then consume the backlog queue alone, as a production worker consumes its one queue: with
        # two queues kombu's Redis channel cannot use the reliable fetch (BLMOVE) and falls back to BRPOP.
        replies = stack.celery.control.cancel_consumer("celery", destination=hosts, reply=True, timeout=10)
        if len(replies or []) < len(hosts):
            raise StackError(f"not every worker answered cancel_consumer ({replies}); see {self.run_dir}/logs")
        released = time.time()
        replies = stack.celery.control.add_consumer(BACKLOG_QUEUE, destination=hosts, reply=True, timeout=10)
        if len(replies or []) < len(hosts):
            raise StackError(f"not every worker answered add_consumer ({replies}); see {self.run_dir}/logs")
        lost = self.wait_done(stack, db, ids, baseline, f"{n} backlog tasks")
        counters = window.stop()
        recs = self.records(db, ids)
        finished = [r["finished"] for r in recs if r.get("finished")]
        drain_s = max(finished) - released if finished else float("nan")
        failures = len(lost) + sum(r.get("state") != "SUCCESS" for r in recs)
        per_task = {k: v / n for k, v in counters["commands"].items()}

        # Latency: a steady rate below saturation (the same for every run of the bench).
        if not (self.rate or drain_s > 0):
            raise StackError(f"no backlog task finished; see the worker logs under {self.run_dir}/logs")
        rate = self.rate or 0.4 * n / drain_s
        m = max(30, round(rate * self.cfg.latency_s))
        lat: dict[str, list[float]] = {"e2e": [], "queue_wait": [], "runtime": []}
        lat_window = Window(stack, broker).start()
        if not self.side.bare:
            self.say(f"latency: {m} tasks at {rate:.0f}/s")
            lids = self.publish(stack, m, queue=BACKLOG_QUEUE, rate=rate)
            lost_l = self.wait_done(stack, db, lids, baseline + n, f"{m} latency tasks")
            failures += len(lost_l)
            for r in self.records(db, lids):
                failures += r.get("state") != "SUCCESS"
                if r.get("sent") and r.get("started") and r.get("finished"):
                    lat["e2e"].append((r["finished"] - r["sent"]) * 1000)
                    lat["queue_wait"].append((r["started"] - r["sent"]) * 1000)
                    lat["runtime"].append((r["finished"] - r["started"]) * 1000)
        lat_counters = lat_window.stop()
        worker_procs = [p for pid in stack.worker_pids().values() for p in _tree(pid)]
        rss = _peak_rss_mb(worker_procs)

        self.say("broker ceiling")
        ceiling = broker_ceiling(stack.ports["redis"])
        other = counters["other_cpu_s"] + lat_counters["other_cpu_s"]
        wall = counters["wall_s"] + lat_counters["wall_s"]
        disturbance = other / (wall * (psutil.cpu_count() or 1)) * 100
        throughput = n / drain_s if drain_s > 0 else None

        def pct(key: str, q: float) -> float | None:
            v = percentile(lat[key], q)
            return None if v is None else round(v, 3)

        figures = {
            "throughput": throughput,
            "e2e_p50_ms": pct("e2e", 50),
            "e2e_p95_ms": pct("e2e", 95),
            "e2e_p99_ms": pct("e2e", 99),
            "queue_wait_p50_ms": pct("queue_wait", 50),
            "queue_wait_p95_ms": pct("queue_wait", 95),
            "runtime_p50_ms": pct("runtime", 50),
            "runtime_p95_ms": pct("runtime", 95),
            "failures": failures,
            "worker_cpu_ms_per_task": counters["worker_cpu_s"] * 1000 / n,
            "broker_cpu_ms_per_task": counters["broker_cpu_s"] * 1000 / n,
            "redis_commands_per_task": sum(per_task.values()),
            "worker_peak_rss_mb": rss,
            "broker_ceiling_ops": ceiling,
            "ceiling_fraction": throughput / ceiling if throughput else None,
            "disturbance_pct": disturbance,
        }
        broker.close()
        db.close()
        return {
            "figures": figures,
            "backlog": n,
            "queued_before_release": queued,
            "drain_s": drain_s,
            "latency_rate": rate,
            "latency_tasks": m,
            "commands_per_task": {k: round(v, 4) for k, v in per_task.items()},
            "broker_bound_tasks_per_s": ceiling / figures["redis_commands_per_task"]
            if figures["redis_commands_per_task"]
            else None,
            "latency_samples_ms": {k: [round(x, 3) for x in v] for k, v in lat.items()},
            "settings": {
                "pool": s.celery_worker_pool,
                "concurrency": s.celery_worker_concurrency,
                "prefetch_multiplier": s.celery_worker_prefetch_multiplier,
                "acks_late": s.celery_task_acks_late,
                "ignore_result": s.celery_task_ignore_result,
                "task_events": s.celery_worker_send_task_events,
            },
        }


# --- the whole bench -------------------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "?"

    redis_version = "?"
    with contextlib.suppress(Exception):
        out = subprocess.run(
            [require_binary("redis-server", "redis-server"), "--version"], capture_output=True, text=True, timeout=10
        ).stdout
        redis_version = next((w.split("=", 1)[1] for w in out.split() if w.startswith("v=")), "?")
    freq = psutil.cpu_freq()
    cpu_model = "?"
    with contextlib.suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu_model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "?")
    return {
        "machine": {
            "hostname": platform.node(),
            "cpus": psutil.cpu_count(),
            "cpu_model": cpu_model,
            "cpu_mhz": round(freq.current) if freq else None,
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "kernel": platform.release(),
        },
        "versions": {
            "python": platform.python_version(),
            "celery": version("celery"),
            "kombu": version("kombu"),
            "redis-py": version("redis"),
            "redis-server": redis_version,
        },
    }


def rounds_order(labels: list[str], rnd: int) -> list[str]:
    """Round r starts with side r mod k: AB, BA, AB... (ABC, BCA, CAB... for a matrix)."""
    k = rnd % len(labels)
    return labels[k:] + labels[:k]


def run_bench(cfg: BenchConfig, run_dir: Path, say: Progress | None = None, command: str = "") -> dict[str, Any]:
    """Run every side ``repeat`` times, interleaved; return the bench document (also written as bench.json)."""
    cfg.validate()
    say = say or (lambda _msg, _done: None)
    labels = [s.label for s in cfg.sides]
    if len(set(labels)) != len(labels):
        raise ProfileError(f"side labels must differ: {labels}")
    by_label = {s.label: s for s in cfg.sides}
    run_dir.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    discarded: list[dict[str, Any]] = []
    started = time.time()
    try:
        _rounds(cfg, run_dir, say, by_label, labels, runs, discarded)
    except BaseException:
        # An interrupted or failed bench keeps what it measured so far (no statistics: unequal sides).
        partial = {"schema": "lab-bench-partial/1", "sides": [s.describe() for s in cfg.sides], "runs": runs,
                   "discarded_runs": discarded}  # fmt: skip
        (run_dir / "partial.json").write_text(json.dumps(partial, indent=2, default=_json_default))
        raise
    rate = cfg.rate if cfg.rate is not None else (runs[0]["latency_rate"] if runs else None)
    doc = {
        "schema": "lab-bench/1",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        "duration_s": round(time.time() - started, 1),
        **environment(),
        "workload": {"name": cfg.workload.name, "description": cfg.workload.description},
        "tasks": cfg.backlog,
        "repeat": cfg.repeat,
        "workers": cfg.workers,
        "latency_rate": rate,
        "latency_s": cfg.latency_s,
        "alpha": cfg.alpha,
        "disturbance_limit_pct": cfg.disturbance_limit,
        "sides": [s.describe() for s in cfg.sides],
        "runs": runs,
        "discarded_runs": discarded,
    }
    doc.update(analyse(doc))
    (run_dir / "bench.json").write_text(json.dumps(doc, indent=2, default=_json_default))
    return doc


def _rounds(
    cfg: BenchConfig,
    run_dir: Path,
    say: Progress,
    by_label: dict[str, Side],
    labels: list[str],
    runs: list[dict[str, Any]],
    discarded: list[dict[str, Any]],
) -> None:
    rate = cfg.rate
    total = cfg.repeat * len(labels)
    for rnd in range(cfg.repeat):
        for label in rounds_order(labels, rnd):
            side = by_label[label]
            attempts: list[dict[str, Any]] = []
            for attempt in range(1, cfg.reruns + 2):
                seq = len(runs) + len(discarded) + len(attempts) + 1
                tag = f"run {len(runs) + 1}/{total} ({label}, round {rnd + 1}, attempt {attempt})"
                rdir = run_dir / "runs" / f"{seq:02d}-r{rnd + 1}-{_slug(label)}"

                def progress(msg: str, tag: str = tag) -> None:
                    say(f"{tag}: {msg}", len(runs))

                progress("starting a fresh stack")
                try:
                    result = Run(cfg, side, rdir, rate, progress).execute()
                except WorkerDied as exc:
                    discarded.append({"side": label, "round": rnd + 1, "attempt": attempt, "run_dir": str(rdir),
                                      "discarded": f"worker died: {exc}"})  # fmt: skip
                    progress(f"discarded (a worker died: {exc})")
                    continue
                result.update({"side": label, "round": rnd + 1, "attempt": attempt, "run_dir": str(rdir)})
                result["disturbed"] = result["figures"]["disturbance_pct"] > cfg.disturbance_limit
                if rate is None:
                    rate = result["latency_rate"]
                attempts.append(result)
                if not result["disturbed"]:
                    break
                progress(f"disturbed ({result['figures']['disturbance_pct']:.0f}% CPU used by others)")
            if not attempts:
                raise StackError(
                    f"side {label} round {rnd + 1}: a worker died in each of {cfg.reruns + 1} attempts; "
                    f"see the worker logs under {run_dir}/runs"
                )
            # Keep the least disturbed attempt: the choice depends on the machine, not on the side's figures.
            kept = min(attempts, key=lambda r: r["figures"]["disturbance_pct"])
            discarded += [r for r in attempts if r is not kept]
            runs.append(kept)
            say(f"run {len(runs)}/{total} done", len(runs))


def side_runs(doc: dict[str, Any], label: str) -> list[dict[str, Any]]:
    return sorted((r for r in doc["runs"] if r["side"] == label), key=lambda r: r["round"])


def analyse(doc: dict[str, Any]) -> dict[str, Any]:
    """Each side after the first against the first, paired by round. Two sides: also top-level ``figures``."""
    labels = [s["label"] for s in doc["sides"]]
    base = side_runs(doc, labels[0])
    comparisons = [
        {"a": labels[0], "b": other, "figures": compare_runs(base, side_runs(doc, other), paired=True,
                                                              alpha=doc["alpha"])}
        for other in labels[1:]
    ]  # fmt: skip
    out: dict[str, Any] = {"comparisons": comparisons}
    if len(labels) == 2:
        out["figures"] = comparisons[0]["figures"]
    return out


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in label)[:40]


def _json_default(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def ensure_inputs(cfg: BenchConfig) -> None:
    """Validate everything before the first (slow) run, so bad input costs nothing."""
    cfg.validate()
    require_binary("redis-server", "redis-server")
    require_binary("redis-benchmark", "redis-tools")
    for side in cfg.sides:
        try:
            resolve(side.profile, {}, side.overrides)
        except SettingsInvalid as exc:
            raise ProfileError(f"side {side.spec!r}: {exc}") from None
