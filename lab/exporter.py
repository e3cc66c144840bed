"""The events exporter: Celery's task and worker events in, celery-exporter-compatible metrics out.

    python -m lab.exporter --broker-url redis://127.0.0.1:6390/0 --port 9808

One process outside the workers subscribes to the broker's event stream (workers send task-received/started/
succeeded/failed/retried/rejected/revoked and heartbeats; publishers send task-sent) and keeps every counter
itself. Nothing is lost when a pool child or a whole worker is SIGKILLed: the surviving main process reports a
dead child (``task-rejected`` after a start, or ``task-failed`` with WorkerLostError), and a worker that died
without a word is noticed when its heartbeats stop. docs/metrics.md explains why this is the core rather than
in-worker multiprocess metrics.

Metric names and labels follow celery-exporter; the lab adds redeliveries, tasks cut short by a lost worker
process (``celery_task_worker_lost_total{cause}``), the lost-task gap, chaos faults (``lab-fault`` events, see
``emit_fault``) and the exporter's own readiness.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import socket
import sys
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis
from celery import Celery
from celery.utils.nodenames import nodesplit
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from app.core.celery import create_celery_app
from app.core.config import get_settings
from app.core.metrics import TASK_BUCKETS, TASK_LABELS, TASK_STATES, WORKER_LABELS, WORKER_TASK_LABELS
from lab.brokerview import AmqpDepthView, RedisBrokerView
from lab.errors import BrokerUnreadable
from lab.ledger_metrics import LedgerCollector
from lab.series_hold import ReleaseOnScrape, SeriesHold

UNKNOWN = "unknown"
PING_EVENT = "lab-exporter-ping"
FAULT_EVENT = "lab-fault"
# Celery's own rule (events.state.heartbeat_expires) is two heartbeat periods; a shared, busy CI machine
# delays heartbeats now and then, so three keeps a slow worker from being declared dead.
DEFAULT_EXPIRY_FACTOR = 3.0
MAX_TASKS = 200_000  # task records kept for labels and timings; the oldest are forgotten first
_TRACEBACK_LAST = re.compile(r"^([A-Za-z_][\w.]*)(?::|$)")
_REPR_NAME = re.compile(r"^\s*([A-Za-z_][\w.]*)\(")


def exception_name(exception: str | None, traceback: str | None = None) -> str:
    """The class name of a task-failed event's exception.

    The event carries ``repr(exc)``; an exception that crossed the pool's pipe can arrive wrapped as
    ``ExceptionWithTraceback(...)``, and the traceback's last line then names the real class.
    """
    text = exception or ""
    if "Worker exited prematurely" in text:
        return "WorkerLostError"
    name = None
    if m := _REPR_NAME.match(text):
        name = m.group(1).rsplit(".", 1)[-1]
        if name == "ExceptionWithTraceback" and (inner := _REPR_NAME.match(text[m.end() :])):
            name = inner.group(1).rsplit(".", 1)[-1]
    if name in (None, "ExceptionWithTraceback") and traceback:
        lines = [line for line in traceback.strip().splitlines() if line and not line.startswith(" ")]
        if lines and (m := _TRACEBACK_LAST.match(lines[-1])):
            name = m.group(1).rsplit(".", 1)[-1]
    return name or UNKNOWN


def host_of(node: str) -> str:
    """celery-exporter's ``hostname``: the host part of a node name (``w1@host`` -> ``host``), so that
    publishers (``gen<pid>@host``, a new name per process) add no series; the node name itself is the
    ``worker`` label, on worker-side series only."""
    return nodesplit(node)[1] or node


def _eta_seconds(eta: Any) -> float | None:
    if not eta:
        return None
    try:
        when = datetime.fromisoformat(str(eta))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


@dataclass
class TaskRecord:
    name: str = UNKNOWN
    queue: str = UNKNOWN
    sent: float | None = None  # the latest publish (a retry republishes)
    eta: float | None = None
    retries: int = 0
    hostname: str | None = None  # the worker running (or last running) it
    started: bool = False
    received_attempts: set[int] = field(default_factory=set)


@dataclass
class WorkerRecord:
    last_seen: float
    freq: float
    up: bool = True
    inflight: set[str] = field(default_factory=set)


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        # task-sent comes from publishers: no worker label (see host_of).
        labels = {"sent": TASK_LABELS, "failed": (*WORKER_TASK_LABELS, "exception")}
        self.tasks = {
            state: Counter(
                f"celery_task_{state}",
                f"Tasks {state} (Celery task-{state} events).",
                labels.get(state, WORKER_TASK_LABELS),
                registry=r,
            )
            for state in TASK_STATES
        }
        self.runtime = Histogram(
            "celery_task_runtime",
            "Task run time in seconds (task-succeeded).",
            WORKER_TASK_LABELS,
            buckets=TASK_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "celery_task_queue_wait_time",
            "Seconds from publish (or from the ETA/countdown, when later) to the start of each execution.",
            WORKER_TASK_LABELS,
            buckets=TASK_BUCKETS,
            registry=r,
        )
        self.worker_up = Gauge(
            "celery_worker_up", "1 while the worker sends heartbeats, 0 once it stopped.", WORKER_LABELS, registry=r
        )
        self.worker_active = Gauge(
            "celery_worker_tasks_active",
            "Tasks the worker is executing (from its heartbeats).",
            WORKER_LABELS,
            registry=r,
        )
        # celery-exporter's queue gauges, from `celery inspect active_queues` and `stats` (housekeeping).
        self.active_consumers = Gauge(
            "celery_active_consumer_count",
            "Consumers of the queue: the broker's count on RabbitMQ; on Redis, which keeps none, the workers "
            "consuming it.",
            ("queue_name",),
            registry=r,
        )
        self.active_workers = Gauge(
            "celery_active_worker_count", "Workers consuming the queue.", ("queue_name",), registry=r
        )
        self.active_processes = Gauge(
            "celery_active_process_count",
            "Pool processes of the workers consuming the queue.",
            ("queue_name",),
            registry=r,
        )
        self.queue_length = Gauge(
            "celery_queue_length",
            "Messages waiting in the broker queue (no sample while the queue cannot be read).",
            ("queue_name",),
            registry=r,
        )
        self.queue_read_errors = Counter(
            "celery_exporter_queue_read_errors",
            "Queue length polls that could not read the queue (its celery_queue_length sample is dropped).",
            ("queue_name",),
            registry=r,
        )
        self.redelivered = Counter(
            "celery_task_redelivered",
            "Deliveries of a task attempt that a worker had already received (requeue after a lost process, "
            "visibility-timeout restore).",
            ("name", "queue_name"),
            registry=r,
        )
        self.worker_lost = Counter(
            "celery_task_worker_lost",
            "Task executions cut short because their process died: cause=pool_child (the worker reported "
            "WorkerLostError or requeued the task) or cause=worker (the whole worker stopped heartbeating).",
            (*WORKER_TASK_LABELS, "cause"),
            registry=r,
        )
        self.lost_gap = Gauge(
            "celery_task_lost_gap",
            "Tasks that started on a process that died and have neither restarted nor finished since.",
            ("queue_name",),
            registry=r,
        )
        self.faults = Counter(
            "celery_lab_faults", "Chaos faults announced with lab-fault events.", ("fault", "target"), registry=r
        )
        # When, exactly: a new (fault, target) series' count is held for the scrape (lab/series_hold.py), and
        # a count says only "within this scrape" anyway. lab report draws its markers from this.
        self.fault_time = Gauge(
            "celery_lab_fault_time_seconds",
            "Unix time of the latest fault announced for this fault and target.",
            ("fault", "target"),
            registry=r,
        )
        self.events = Counter("celery_exporter_events", "Events consumed, by type.", ("type",), registry=r)
        self.ready = Gauge("celery_exporter_ready", "1 once the exporter receives its own events.", registry=r)
        self.broker_connected = Gauge("celery_exporter_broker_connected", "1 while consuming events.", registry=r)


class EventState:
    """Pure event bookkeeping (no I/O), so the rules are testable without a broker."""

    def __init__(
        self,
        registry: CollectorRegistry,
        default_queue: str,
        expiry_factor: float = DEFAULT_EXPIRY_FACTOR,
        hold_s: float = 0.0,
    ) -> None:
        self.lock = threading.Lock()
        # Before the metrics: a scrape releases ended holds first, then reads them (lab/series_hold.py).
        self.hold = SeriesHold(hold_s)
        registry.register(ReleaseOnScrape(self.release_held))
        self.m = Metrics(registry)
        # Only task-sent carries the queue, and a worker's task-received can overtake the publisher's
        # task-sent on the way to the exporter: until task-sent arrives, a task is on the default queue.
        self.default_queue = default_queue
        self.expiry_factor = expiry_factor
        self.tasks: OrderedDict[str, TaskRecord] = OrderedDict()
        self.workers: dict[str, WorkerRecord] = {}
        self.lost: dict[str, str] = {}  # task id -> queue, for the lost-task gap
        self.queues: set[str] = set()
        self._initialized: set[tuple[str, ...]] = set()
        self.ping_nonce = uuid.uuid4().hex
        self.ready = threading.Event()
        # When our own last ping came back: the event stream was delivering at that moment.
        self.last_ping = 0.0

    # --- helpers -----------------------------------------------------------------------------------------
    def _task(self, task_id: str) -> TaskRecord:
        rec = self.tasks.get(task_id)
        if rec is None:
            rec = self.tasks[task_id] = TaskRecord(queue=self.default_queue)
            if len(self.tasks) > MAX_TASKS:
                self.tasks.popitem(last=False)
        return rec

    def release_held(self) -> None:
        with self.lock:
            self.hold.release()

    def _labels(self, rec: TaskRecord, node: str) -> tuple[str, str, str, str]:
        """A worker-side series' labels: name, hostname (the host), queue_name, worker (the node name)."""
        return rec.name, host_of(node), rec.queue, node

    def _init_series(self, labels: tuple[str, ...]) -> None:
        """Create every series of a task on a worker at 0 on its first event there, as celery-exporter does
        (the failed one with an empty exception), so success ratios read 100 % rather than "No data" and the
        first failure or loss is an increase; the hold covers a series born on its own event."""
        if labels in self._initialized:
            return
        self._initialized.add(labels)
        for state in TASK_STATES:
            if state == "failed":
                self.hold.touch(self.m.tasks[state], *labels, "")
            elif state != "sent":
                self.hold.touch(self.m.tasks[state], *labels)
        self.hold.touch(self.m.runtime, *labels)
        self.hold.touch(self.m.queue_wait, *labels)
        for cause in ("pool_child", "worker"):
            self.hold.touch(self.m.worker_lost, *labels, cause)
        self.hold.touch(self.m.redelivered, labels[0], labels[2])

    def _set_gap(self, queue: str) -> None:
        self.m.lost_gap.labels(queue).set(sum(1 for q in self.lost.values() if q == queue))

    def _mark_lost(self, task_id: str, rec: TaskRecord, hostname: str, cause: str) -> None:
        self.hold.inc(self.m.worker_lost, *self._labels(rec, hostname), cause)
        self.lost[task_id] = rec.queue
        self._set_gap(rec.queue)

    def _not_lost(self, task_id: str) -> None:
        queue = self.lost.pop(task_id, None)
        if queue is not None:
            self._set_gap(queue)

    def _leave_worker(self, task_id: str, hostname: str) -> None:
        worker = self.workers.get(hostname)
        if worker is not None:
            worker.inflight.discard(task_id)

    def _seen_worker(self, hostname: str, event: dict[str, Any]) -> WorkerRecord:
        now = float(event.get("local_received") or time.time())
        freq = float(event.get("freq") or 2.0)
        worker = self.workers.get(hostname)
        if worker is None:
            worker = self.workers[hostname] = WorkerRecord(last_seen=now, freq=freq)
        worker.last_seen, worker.freq, worker.up = now, freq, True
        self.m.worker_up.labels(host_of(hostname), hostname).set(1)
        return worker

    # --- events ------------------------------------------------------------------------------------------
    def handle(self, event: dict[str, Any]) -> None:
        with self.lock:
            self._handle(event)

    def _handle(self, event: dict[str, Any]) -> None:
        etype = str(event.get("type", ""))
        self.hold.inc(self.m.events, etype)
        hostname = str(event.get("hostname") or UNKNOWN)
        ts = float(event.get("timestamp") or time.time())
        if etype == PING_EVENT:
            if event.get("nonce") == self.ping_nonce:
                self.ready.set()
                self.m.ready.set(1)
                self.last_ping = max(self.last_ping, float(event.get("local_received") or time.time()))
            return
        if etype == FAULT_EVENT:
            fault = (str(event.get("fault", UNKNOWN)), str(event.get("target", UNKNOWN)))
            self.hold.inc(self.m.faults, *fault)
            self.m.fault_time.labels(*fault).set(ts)
            return
        if etype.startswith("worker-"):
            if etype == "worker-offline":
                self._worker_gone(hostname, cause="worker")
                return
            self._seen_worker(hostname, event)
            if "active" in event:
                self.m.worker_active.labels(host_of(hostname), hostname).set(float(event["active"] or 0))
            return
        if not etype.startswith("task-"):
            return
        task_id = event.get("uuid")
        if not task_id:
            return
        rec = self._task(str(task_id))
        state = etype.removeprefix("task-")
        if state == "sent":
            rec.name = str(event.get("name") or rec.name)
            rec.queue = str(event.get("queue") or event.get("routing_key") or rec.queue)
            rec.sent, rec.eta = ts, _eta_seconds(event.get("eta"))
            rec.retries = int(event.get("retries") or 0)
            self.queues.add(rec.queue)
            self.m.lost_gap.labels(rec.queue)  # 0 until a loss, rather than no series
            self.hold.inc(self.m.tasks["sent"], rec.name, host_of(hostname), rec.queue)
            return
        if state == "received":
            rec.name = str(event.get("name") or rec.name)
            attempt = int(event.get("retries") or 0)
            labels = self._labels(rec, hostname)
            self._init_series(labels)
            if attempt in rec.received_attempts:
                self.hold.inc(self.m.redelivered, rec.name, rec.queue)
            rec.received_attempts.add(attempt)
            rec.hostname = hostname
            self.hold.inc(self.m.tasks["received"], *labels)
            return
        if state == "started":
            rec.hostname, rec.started = hostname, True
            self._not_lost(task_id)
            self._seen_worker(hostname, event).inflight.add(task_id)
            labels = self._labels(rec, hostname)
            self._init_series(labels)
            self.hold.inc(self.m.tasks["started"], *labels)
            if rec.sent is not None:
                ready_at = max(rec.sent, rec.eta or 0.0)
                self.hold.observe(self.m.queue_wait, max(0.0, ts - ready_at), *labels)
            return
        if state not in TASK_STATES:
            return
        # A final event (or a retry/reject) ends this execution.
        self._leave_worker(task_id, hostname)
        was_started, rec.started = rec.started, False
        labels = self._labels(rec, hostname)
        self._init_series(labels)
        if state == "failed":
            exc = exception_name(event.get("exception"), event.get("traceback"))
            self.hold.inc(self.m.tasks["failed"], *labels, exc)
            if exc == "WorkerLostError":
                self.hold.inc(self.m.worker_lost, *labels, "pool_child")
            self._not_lost(task_id)
            return
        self.hold.inc(self.m.tasks[state], *labels)
        if state == "succeeded" and event.get("runtime") is not None:
            self.hold.observe(self.m.runtime, float(event["runtime"]), *labels)
        if state == "rejected" and event.get("requeue") and was_started:
            # With acks_late + reject_on_worker_lost a dead pool child's task is requeued, not failed.
            self._mark_lost(task_id, rec, hostname, "pool_child")
        elif state in {"succeeded", "revoked"}:
            self._not_lost(task_id)

    def _worker_gone(self, hostname: str, cause: str) -> None:
        worker = self.workers.get(hostname)
        self.m.worker_up.labels(host_of(hostname), hostname).set(0)
        self.m.worker_active.labels(host_of(hostname), hostname).set(0)
        if worker is None:
            return
        worker.up = False
        for task_id in sorted(worker.inflight):
            rec = self.tasks.get(task_id)
            if rec is None:
                continue
            # Every execution this worker had started is cut short; the task is a gap only if it is not
            # already running again elsewhere (a visibility-timeout restore can beat the heartbeat expiry).
            self.hold.inc(self.m.worker_lost, *self._labels(rec, hostname), cause)
            if rec.started and rec.hostname == hostname:
                rec.started = False
                self.lost[task_id] = rec.queue
                self._set_gap(rec.queue)
        worker.inflight.clear()

    def expire(self, now: float | None = None) -> list[str]:
        """Mark workers whose heartbeats stopped as down (a SIGKILLed worker sends no worker-offline).

        Only silence on a live stream counts: a worker is expired once its deadline has passed and one of our
        own pings came back after that deadline. A paused or unreachable broker stops every heartbeat and
        every ping alike, and must not make every worker "down" and every running task "lost"."""
        now = time.time() if now is None else now
        gone = []
        with self.lock:
            for hostname, worker in self.workers.items():
                deadline = worker.last_seen + worker.freq * self.expiry_factor
                if worker.up and min(now, self.last_ping) > deadline:
                    self._worker_gone(hostname, cause="worker")
                    gone.append(hostname)
        return gone


class PoisonCollector(Collector):
    """``celery_lab_poison_total{queue,reason}``: items the lab's Redis transport quarantined on
    ``<queue>.poison`` (app/core/broker.py), read from the counts it keeps in Redis, so every worker's
    quarantines add up. Every reason is reported from the start (0 until it happens), so ``increase()``
    sees the first one; a queue that cannot be read reports nothing, never a made-up 0."""

    def __init__(self, views: Callable[[], list[RedisBrokerView]]) -> None:
        self.views = views

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "celery_lab_poison", "Queue items quarantined as poison, by queue and reason.", labels=["queue", "reason"]
        )
        for view in self.views():
            try:
                counts = view.poison_counts()
            except BrokerUnreadable:
                continue
            for reason, n in counts.items():
                family.add_metric([view.queue, reason], n)
        yield family


@dataclass(frozen=True)
class QueueConsumers:
    """Who consumes each queue, per `celery inspect active_queues` and `stats` (celery-exporter's gauges)."""

    workers: dict[str, int]
    processes: dict[str, int]

    @classmethod
    def from_replies(
        cls, active_queues: dict[str, list[dict[str, Any]]], stats: dict[str, dict[str, Any]]
    ) -> QueueConsumers:
        workers: dict[str, int] = {}
        processes: dict[str, int] = {}
        for node, queues in active_queues.items():
            pool = len((stats.get(node) or {}).get("pool", {}).get("processes", []) or [])
            for q in queues:
                name = str(q.get("name"))
                workers[name] = workers.get(name, 0) + 1
                processes[name] = processes.get(name, 0) + pool
        return cls(workers, processes)


class Exporter:
    def __init__(
        self, broker_url: str, queues: list[str], expiry_factor: float, queue_interval: float, hold_s: float = 0.0
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.state = EventState(self.registry, queues[0], expiry_factor, hold_s)
        self.state.queues.update(queues)
        self.broker_url = broker_url
        self.queue_interval = queue_interval
        self.app = Celery("lab-exporter", broker=broker_url, set_as_current=False)
        self.app.conf.broker_connection_retry_on_startup = True
        self.stop = threading.Event()
        for q in queues:
            self.state.m.queue_read_errors.labels(q)
        if self.redis_broker:
            self.registry.register(PoisonCollector(lambda: [self._redis_view(q) for q in sorted(self.state.queues)]))

    @property
    def redis_broker(self) -> bool:
        return self.broker_url.startswith(("redis://", "rediss://", "unix://"))

    def _redis_view(self, queue: str) -> RedisBrokerView:
        return RedisBrokerView(lambda: redis.Redis.from_url(self.broker_url, socket_timeout=2), queue, 0)

    def consume(self) -> None:
        while not self.stop.is_set():
            try:
                with self.app.connection_for_read() as conn:
                    receiver = self.app.events.Receiver(conn, handlers={"*": self.state.handle})
                    self.state.m.broker_connected.set(1)
                    for _ in receiver.consume(limit=None, timeout=None, safety_interval=1.0, wakeup=True):
                        if self.stop.is_set():
                            return
            except Exception as exc:
                self.state.m.broker_connected.set(0)
                print(f"lab.exporter: event stream interrupted ({exc!r}); reconnecting", file=sys.stderr, flush=True)
                self.stop.wait(1.0)  # back off before reconnecting, not a wait for a condition

    def ping(self) -> None:
        """Send our own event every half second. Its first return proves the subscription is live (ready);
        later ones prove the stream still delivers, which heartbeat expiry relies on."""
        while not self.stop.is_set():
            try:
                with self.app.events.default_dispatcher(hostname="lab-exporter") as dispatcher:
                    while not self.stop.is_set():
                        dispatcher.send(PING_EVENT, nonce=self.state.ping_nonce)
                        self.stop.wait(0.5)  # the ping period, not a wait for a condition
            except Exception as exc:
                print(f"lab.exporter: ping failed ({exc!r}); retrying", file=sys.stderr, flush=True)
                self.stop.wait(1.0)

    def queue_lengths(self) -> dict[str, int | None]:
        """Each known queue's depth, or None when it could not be read (never a made-up 0)."""
        out: dict[str, int | None] = {}
        for q in sorted(self.state.queues):
            view = self._redis_view(q) if self.redis_broker else AmqpDepthView(self.app.connection_for_read, q)
            try:
                out[q] = view.depth()
            except BrokerUnreadable:
                out[q] = None
        return out

    def record_queue_lengths(self) -> None:
        for q, n in self.queue_lengths().items():
            if n is None:
                self.state.m.queue_read_errors.labels(q).inc()
                with contextlib.suppress(KeyError):
                    self.state.m.queue_length.remove(q)
            else:
                self.state.m.queue_length.labels(q).set(n)

    def consumers(self) -> QueueConsumers:
        """Ask the workers (a broadcast over the broker, one second for replies); no reply is no consumer."""
        inspect = self.app.control.inspect(timeout=1.0)
        return QueueConsumers.from_replies(inspect.active_queues() or {}, inspect.stats() or {})

    def broker_consumer_count(self, queue: str) -> int | None:
        """RabbitMQ's own consumer count for ``queue`` (None: Redis keeps none, or the queue is unreadable)."""
        if self.redis_broker:
            return None
        try:
            with self.app.connection_for_read() as conn:
                return int(conn.default_channel.queue_declare(queue, passive=True).consumer_count)
        except Exception:  # a missing queue or an unreachable broker: no sample, never a made-up 0
            return None

    def record_consumers(self) -> None:
        try:
            found = self.consumers()
        except Exception as exc:  # a broker that does not answer: keep the last values, say why
            print(f"lab.exporter: inspect failed ({exc!r}); consumer gauges not updated", file=sys.stderr, flush=True)
            return
        m = self.state.m
        for q in sorted(self.state.queues | set(found.workers)):
            m.active_workers.labels(q).set(found.workers.get(q, 0))
            m.active_processes.labels(q).set(found.processes.get(q, 0))
            broker_count = self.broker_consumer_count(q)
            m.active_consumers.labels(q).set(found.workers.get(q, 0) if broker_count is None else broker_count)

    def inspecting(self) -> None:
        while not self.stop.is_set():
            self.record_consumers()
            self.stop.wait(self.queue_interval)  # the poll period, not a wait for a condition

    def housekeeping(self) -> None:
        next_poll = 0.0
        while not self.stop.is_set():
            self.state.expire()
            self.state.release_held()
            if time.monotonic() >= next_poll:
                next_poll = time.monotonic() + self.queue_interval
                self.record_queue_lengths()
            self.stop.wait(0.5)

    def run(self, host: str, port: int) -> None:
        start_http_server(port, addr=host, registry=self.registry)
        threads = [
            threading.Thread(target=self.consume, name="events", daemon=True),
            threading.Thread(target=self.housekeeping, name="housekeeping", daemon=True),
            threading.Thread(target=self.ping, name="ping", daemon=True),
            threading.Thread(target=self.inspecting, name="inspect", daemon=True),
        ]
        for t in threads:
            t.start()
        print(f"lab.exporter: serving metrics on http://{host}:{port}/metrics", flush=True)
        self.stop.wait()


def emit_fault(app: Celery, fault: str, target: str) -> None:
    """Announce a chaos fault on the event stream (the exporter counts it; the Chaos dashboard marks it).

    Over a fresh connection: a pooled one may predate the broker restart that is being announced."""
    with app.connection_for_write() as conn:
        dispatcher = app.events.Dispatcher(conn, hostname=f"lab-chaos@{socket.gethostname()}")
        try:
            dispatcher.send(FAULT_EVENT, fault=fault, target=target)
        finally:
            dispatcher.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lab.exporter", description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker-url", help="Broker to read events from (default: CELERY_BROKER_URL).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9808)
    parser.add_argument(
        "--queue",
        action="append",
        default=None,
        help="Queue to report the length of (repeat); the first is the default queue (default: the app's "
        "task_default_queue).",
    )
    parser.add_argument(
        "--expiry-factor", type=float, default=DEFAULT_EXPIRY_FACTOR, help="Heartbeats missed before down."
    )
    parser.add_argument(
        "--queue-interval", type=float, default=2.0, help="Seconds between queue length and consumer polls."
    )
    parser.add_argument(
        "--new-series-hold",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="Show each new counter series at 0 this long before its first counts, so rate()/increase() see "
        "them: set it above your Prometheus scrape interval (lab/series_hold.py). Default 0: off.",
    )
    parser.add_argument(
        "--ledger-url",
        default=os.environ.get("LAB_LEDGER_URL"),
        help="A chaos loss ledger's Redis to serve celery_lab_ledger_* from (default: $LAB_LEDGER_URL).",
    )
    args = parser.parse_args(argv)
    broker = args.broker_url
    if broker is None:
        broker = get_settings().celery_broker_url
    disable_created_metrics()  # no *_created series: half the exposition, nothing the dashboards read
    queues = args.queue or [str(create_celery_app(get_settings(), set_as_current=False).conf.task_default_queue)]
    if args.new_series_hold < 0:
        parser.error(f"--new-series-hold must be 0 or more seconds, not {args.new_series_hold}")
    exporter = Exporter(broker, queues, args.expiry_factor, args.queue_interval, args.new_series_hold)
    if args.ledger_url:
        exporter.registry.register(LedgerCollector(args.ledger_url))
    exporter.run(args.host, args.port)


if __name__ == "__main__":
    main()
