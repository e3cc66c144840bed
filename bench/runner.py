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

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import redis
from celery import states

from app.core.timeline import read_timeline, timeline_key
from bench.config import BenchConfig, Side
from bench.figures import compare_runs
from bench.measure import Window, broker_ceiling, peak_rss_mb, process_tree
from lab.errors import ProfileError, StackError
from lab.machine import environment, load_avg
from lab.procs import wait_until
from lab.stack import Stack, StackConfig
from lab.stats import percentile

BACKLOG_QUEUE = "bench.backlog"
SETTINGS_REPORTED = ("pool", "concurrency", "prefetch_multiplier", "acks_late", "ignore_result", "task_events")
RESULTS_DB, CACHE_DB = 1, 2


class WorkerDied(StackError):
    """A worker died during a run: the run says nothing about its side and is discarded."""


# Progress callback: (message, runs finished so far).
Progress = Callable[[str, int], None]


# --- one run ---------------------------------------------------------------------------------------------


class Run:
    def __init__(
        self, cfg: BenchConfig, side: Side, run_dir: Path, rate: float | None, say: Callable[[str], None]
    ) -> None:
        self.cfg, self.side, self.run_dir, self.rate, self.say = cfg, side, run_dir, rate, say
        self.calls = cfg.workload.calls(bare=side.via_backend, names=side.task_names)

    def stack_config(self) -> StackConfig:
        return StackConfig(
            run_dir=self.run_dir,
            profile=self.side.profile if self.side.app.reference else "reference",
            workers=self.cfg.workers,
            overrides=dict(self.side.overrides),
            environ={},  # the caller's CELERY_* exports would override both sides alike and hide the difference
            api=False,
            smtp=self.cfg.workload.smtp,
            ai_stub=self.cfg.workload.ai_stub,
            extra_env=dict(self.side.knobs),
            probes=self.side.probes,
            app=self.side.app,
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
        return RESULTS_DB if self.side.via_backend else CACHE_DB

    def done_key(self, stack: Stack, task_id: str) -> bytes | str:
        """Where a finished task leaves its trace: the result backend's key (bare side), else its timeline."""
        return stack.celery.backend.get_key_for_task(task_id) if self.side.via_backend else timeline_key(task_id)

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
                key = self.done_key(stack, task_id)
                pipe.get(key) if self.side.via_backend else pipe.exists(key)  # a timeline is a hash: EXISTS
            pending = [t for t, raw in zip(pending, pipe.execute(), strict=True) if not self.finished(stack, raw)]
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

    def finished(self, stack: Stack, found: bytes | int | None) -> bool:
        """A timeline exists once its task finished (``found``: EXISTS's count); a result (``found``: its raw
        value) may also say STARTED (task_track_started), which is not finished."""
        if not self.side.via_backend:
            return bool(found)
        return isinstance(found, bytes) and stack.celery.backend.decode_result(found)["status"] in states.READY_STATES

    @staticmethod
    def _worker_died(stack: Stack) -> Callable[[], str | None]:
        def check() -> str | None:
            return next((r for w in stack.workers.values() if (r := w.proc.died())), None)

        return check

    def records(self, stack: Stack, db: redis.Redis, ids: list[str]) -> list[dict[str, Any]]:
        if not self.side.via_backend:
            return [tl for t in ids if (tl := read_timeline(t, db))]
        out = []
        backend = stack.celery.backend
        for raw in db.mget([self.done_key(stack, t) for t in ids]):
            if raw:
                meta = backend.decode_result(raw)
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
        settings = stack.app_settings()
        slots = settings["concurrency"] * self.cfg.workers
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
        queued = stack.broker_view(BACKLOG_QUEUE).depth()
        self.say(f"throughput: draining {n}")
        # The workers then consume the backlog queue alone, as a production worker consumes its one queue: with
        # two queues kombu's Redis channel cannot use the reliable fetch (BLMOVE) and falls back to BRPOP.
        replies = stack.celery.control.cancel_consumer(stack.queue, destination=hosts, reply=True, timeout=10)
        if len(replies or []) < len(hosts):
            raise StackError(f"not every worker answered cancel_consumer ({replies}); see {self.run_dir}/logs")
        released = time.time()
        replies = stack.celery.control.add_consumer(BACKLOG_QUEUE, destination=hosts, reply=True, timeout=10)
        if len(replies or []) < len(hosts):
            raise StackError(f"not every worker answered add_consumer ({replies}); see {self.run_dir}/logs")
        lost = self.wait_done(stack, db, ids, baseline, f"{n} backlog tasks")
        counters = window.stop()
        recs = self.records(stack, db, ids)
        finished = [r["finished"] for r in recs if r.get("finished")]
        drain_s = max(finished) - released if finished else float("nan")
        failures = len(lost) + sum(r.get("state") != states.SUCCESS for r in recs)
        per_task = {k: v / n for k, v in counters["commands"].items()}

        # Latency: a steady rate below saturation (the same for every run of the bench).
        if not (self.rate or drain_s > 0):
            raise StackError(f"no backlog task finished; see the worker logs under {self.run_dir}/logs")
        rate = self.rate or 0.4 * n / drain_s
        m = max(30, round(rate * self.cfg.latency_s))
        lat: dict[str, list[float]] = {"e2e": [], "queue_wait": [], "runtime": []}
        lat_window = Window(stack, broker).start()
        if not self.side.via_backend:
            self.say(f"latency: {m} tasks at {rate:.0f}/s")
            lids = self.publish(stack, m, queue=BACKLOG_QUEUE, rate=rate)
            lost_l = self.wait_done(stack, db, lids, baseline + n, f"{m} latency tasks")
            failures += len(lost_l)
            for r in self.records(stack, db, lids):
                failures += r.get("state") != states.SUCCESS
                if r.get("sent") and r.get("started") and r.get("finished"):
                    lat["e2e"].append((r["finished"] - r["sent"]) * 1000)
                    lat["queue_wait"].append((r["started"] - r["sent"]) * 1000)
                    lat["runtime"].append((r["finished"] - r["started"]) * 1000)
        lat_counters = lat_window.stop()
        worker_procs = [p for pid in stack.worker_pids().values() for p in process_tree(pid)]
        rss = peak_rss_mb(worker_procs)

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
            "worker_rss_per_process_mb": rss / len(worker_procs) if worker_procs else None,
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
            "settings": {k: settings[k] for k in SETTINGS_REPORTED},
        }


# --- the whole bench -------------------------------------------------------------------------------------


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
    load_start = load_avg()
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
        "load_average": {"start": load_start, "end": load_avg()},
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
