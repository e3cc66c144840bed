"""The audit's checks: each a small function over a loaded app, returning findings. Pure (but for the one that
asks the broker about persistence, which only runs when given a broker URL).

Each finding names its evidence: the reliability-matrix cell (``<broker>/<fault>/<config>``) that shows what
the hazard costs, and the chaos experiment that measures it today where there is one.
"""

from __future__ import annotations

import datetime
import inspect
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from types import ModuleType
from typing import Any

import redis
from celery import Celery
from celery.app.defaults import NAMESPACES, flatten
from celery.schedules import BaseSchedule

from lab.apps import AppInputError
from lab.stack import PROBE_MODULE

PASS, WARN, FAIL = "pass", "warn", "fail"
KOMBU_DEFAULT_VISIBILITY_S = 3600
UNSAFE_SERIALIZERS = {"pickle", "yaml", "application/x-python-serialize", "application/x-yaml"}
KNOWN_SETTINGS = {key for key, _ in flatten(NAMESPACES)} | {"deprecated_settings"}
# Task attributes the guide sets as if they were app settings: Celery ignores them there.
TASK_ATTRIBUTES = {"task_default_retry_delay": "default_retry_delay", "task_max_retries": "max_retries"}


@dataclass(frozen=True)
class Finding:
    id: str
    status: str
    found: str
    fix: str
    evidence: str | None = None  # the reliability-matrix cell
    experiment: str | None = None  # the chaos experiment that measures it today

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _redis_broker(app: Celery) -> bool:
    return str(app.conf.broker_url or "").startswith(("redis://", "rediss://", "unix://"))


def own_tasks(app: Celery) -> list[Any]:
    """The app's tasks: not Celery's own, and not the lab's probes (shared tasks join every app finalized in a
    process that imported them, and the lab's CLI has)."""
    return [
        t
        for name, t in sorted(app.tasks.items())
        if not name.startswith("celery.") and getattr(t.run, "__module__", "") != PROBE_MODULE
    ]


def set_explicitly(app: Celery) -> set[str]:
    """Settings the app sets itself, from every layer (conf.update, config_from_object...), not Celery's
    defaults; ``conf.changes`` holds only the first layer."""
    return {k for k in app.conf.without_defaults() if not k.startswith("__")}


def check_serializers(app: Celery) -> Iterator[Finding]:
    conf = app.conf
    used = {str(conf.task_serializer), str(conf.result_serializer), *map(str, conf.accept_content or ())}
    unsafe = sorted(used & UNSAFE_SERIALIZERS)
    if unsafe:
        yield Finding(
            "serializers",
            FAIL,
            f"unsafe serializers in use or accepted: {unsafe}",
            'task_serializer="json", accept_content=["json"]: a pickle body runs code when loaded',
        )
    else:
        yield Finding("serializers", PASS, f"serializers {sorted(used)}", "")


def check_acks(app: Celery) -> Iterator[Finding]:
    conf = app.conf
    if not conf.task_acks_late:
        yield Finding(
            "acks-late",
            FAIL,
            "task_acks_late is off: a message is acked before its task runs",
            "task_acks_late=True, so a killed worker's task is delivered again",
            "redis/pool-child-sigkill/acks-early",
            "control-acks-early-pool-child",
        )
        return
    yield Finding("acks-late", PASS, "task_acks_late is on", "")
    if not conf.task_reject_on_worker_lost:
        yield Finding(
            "reject-on-worker-lost",
            FAIL,
            "task_acks_late without task_reject_on_worker_lost: a task whose pool child dies is acked",
            "task_reject_on_worker_lost=True",
            "redis/pool-child-sigkill/acks-late-no-reject",
            "control-no-reject-on-worker-lost",
        )
    else:
        yield Finding("reject-on-worker-lost", PASS, "task_reject_on_worker_lost is on", "")


def longest_time_limit(app: Celery) -> float | None:
    limits = [app.conf.task_time_limit, *(getattr(t, "time_limit", None) for t in own_tasks(app))]
    numbers = [float(v) for v in limits if isinstance(v, int | float) and v]
    return max(numbers) if numbers else None


def check_visibility_timeout(app: Celery) -> Iterator[Finding]:
    if not _redis_broker(app):
        return
    options = app.conf.broker_transport_options or {}
    vt = float(options.get("visibility_timeout", KOMBU_DEFAULT_VISIBILITY_S))
    longest = longest_time_limit(app)
    default = "" if "visibility_timeout" in options else " (kombu's default)"
    if longest is not None and vt <= longest:
        yield Finding(
            "visibility-timeout",
            FAIL,
            f"Redis visibility_timeout {vt:g}s{default} is not longer than the longest time limit {longest:g}s: "
            "a task still running is handed to another worker",
            "broker_transport_options visibility_timeout above every task's time limit (and countdown/ETA)",
            "redis/none/visibility-shorter-than-task",
            "visibility-timeout-duplicates",
        )
    elif "visibility_timeout" not in options:
        yield Finding(
            "visibility-timeout",
            WARN,
            f"Redis visibility_timeout left at kombu's default {vt:g}s: a dead worker's messages wait "
            "that long before they run again",
            "set broker_transport_options visibility_timeout to a bit above your longest task",
            "redis/worker-main-sigkill/visibility-default-1h",
        )
    else:
        limit = "no time limit" if longest is None else f"the longest time limit {longest:g}s"
        yield Finding("visibility-timeout", PASS, f"visibility_timeout {vt:g}s, above {limit}", "")


def check_prefetch(app: Celery) -> Iterator[Finding]:
    n = int(app.conf.worker_prefetch_multiplier or 0)
    if n > 1 and app.conf.task_acks_late:
        yield Finding(
            "prefetch",
            WARN,
            f"worker_prefetch_multiplier {n} with acks_late: each process holds {n} unacked messages that a "
            "crash parks until the visibility timeout",
            "worker_prefetch_multiplier=1 for long or acks_late tasks",
            "redis/worker-main-sigkill/prefetch-4",
        )
    else:
        yield Finding("prefetch", PASS, f"worker_prefetch_multiplier {n}", "")


def check_soft_shutdown(app: Celery) -> Iterator[Finding]:
    timeout = float(app.conf.worker_soft_shutdown_timeout or 0)
    if timeout > 0 and app.conf.task_acks_late:
        yield Finding(
            "soft-shutdown",
            WARN,
            f"worker_soft_shutdown_timeout {timeout:g} s with acks_late: Celery sleeps out the timeout without "
            "reading its pool, then cancels a task that completed meanwhile unacked, and it runs again",
            "stop workers with SIGTERM (a warm shutdown) and a grace period; keep the soft shutdown for tasks "
            "that may run twice",
            None,
            "soft-shutdown-near-completion",
        )
    else:
        yield Finding("soft-shutdown", PASS, f"worker_soft_shutdown_timeout {timeout:g} s", "")


def check_time_limits(app: Celery) -> Iterator[Finding]:
    soft, hard = app.conf.task_soft_time_limit, app.conf.task_time_limit
    if not soft or not hard:
        yield Finding(
            "time-limits",
            WARN,
            f"task_soft_time_limit={soft}, task_time_limit={hard}",
            "set both, the soft one below the hard one, so a stuck task is stopped and can clean up",
        )
    elif soft >= hard:
        yield Finding(
            "time-limits",
            FAIL,
            f"task_soft_time_limit {soft} is not below task_time_limit {hard}",
            "the soft limit must come first to raise SoftTimeLimitExceeded",
        )
    else:
        yield Finding("time-limits", PASS, f"soft {soft}s below hard {hard}s", "")


def check_results(app: Celery) -> Iterator[Finding]:
    backend = app.conf.result_backend
    if not backend or str(backend).startswith("disabled"):
        yield Finding("result-backend", WARN, "no result backend", "set result_backend if any caller reads results")
    else:
        yield Finding("result-backend", PASS, "a result backend is configured", "")
    if app.conf.result_expires is None:
        yield Finding(
            "result-expires",
            WARN,
            "result_expires is None: results are kept for ever",
            "result_expires in seconds (Celery's default is a day)",
        )
    else:
        yield Finding("result-expires", PASS, f"result_expires {app.conf.result_expires}", "")


def check_ignored_settings(app: Celery) -> Iterator[Finding]:
    # A settings module read by config_from_object brings its imports along (``import os``): not settings.
    conf = app.conf.without_defaults()
    unknown = sorted(k for k in set_explicitly(app) - KNOWN_SETTINGS if not isinstance(conf.get(k), ModuleType))
    if not unknown:
        yield Finding("ignored-settings", PASS, "every setting is one Celery reads", "")
        return
    hints = [f"{k} is the Task attribute {TASK_ATTRIBUTES[k]}" for k in unknown if k in TASK_ATTRIBUTES]
    yield Finding(
        "ignored-settings",
        WARN,
        f"Celery ignores these settings: {unknown}" + (f" ({'; '.join(hints)})" if hints else ""),
        "drop them, or set the Task attributes they stand for (e.g. @app.task(default_retry_delay=60))",
    )


def check_beat_schedule(app: Celery) -> Iterator[Finding]:
    bad = [
        name
        for name, entry in (app.conf.beat_schedule or {}).items()
        if not isinstance(entry.get("schedule"), int | float | datetime.timedelta | BaseSchedule)
    ]
    if bad:
        yield Finding(
            "beat-schedule",
            FAIL,
            f"beat entries Celery cannot schedule: {bad}",
            "a schedule is seconds, a timedelta or a schedule object such as crontab(hour=2, minute=0)",
        )
    else:
        yield Finding("beat-schedule", PASS, f"{len(app.conf.beat_schedule or {})} beat entries", "")


def _retries(task: Any) -> bool:
    try:
        return ".retry(" in inspect.getsource(task.run)
    except (OSError, TypeError):
        return False


def check_tasks(app: Celery) -> Iterator[Finding]:
    for task in own_tasks(app):
        name = task.name
        if (
            _retries(task) and not hasattr(task.run, "__self__")  # bind=True makes run a bound method
        ):
            yield Finding(
                f"task-bind:{name}",
                FAIL,
                f"{name} calls .retry( without bind=True",
                "@app.task(bind=True) and self.retry(...)",
            )
        if getattr(task, "autoretry_for", ()) and not getattr(task, "retry_backoff", False):
            yield Finding(
                f"task-backoff:{name}",
                WARN,
                f"{name} has autoretry_for without retry_backoff",
                "retry_backoff=True (and retry_jitter) so retries do not hammer a failing dependency",
            )
        if app.conf.task_acks_late and getattr(task, "acks_late", None) is False:
            yield Finding(
                f"task-acks-late:{name}",
                WARN,
                f"{name} turns acks_late off while the app has it on",
                "leave acks_late to the app unless losing this task on a crash is fine",
                "redis/pool-child-sigkill/acks-early",
                "control-acks-early-pool-child",
            )


def check_explicit(app: Celery) -> Iterator[Finding]:
    changes = set_explicitly(app)
    for key, why, cell in (
        (
            "worker_cancel_long_running_tasks_on_connection_loss",
            "whether a task still running when the broker connection drops is cancelled (and redelivered)",
            "redis/broker-restart-aof/cancel-long-running-on-connection-loss",
        ),
        ("broker_connection_retry_on_startup", "whether a worker started before its broker retries or exits", None),
    ):
        if key in changes:
            yield Finding(key, PASS, f"{key}={app.conf[key]} (set explicitly)", "")
        else:
            yield Finding(key, WARN, f"{key} left at Celery's default: {why}", f"set {key} explicitly", cell)


def check_broker_persistence(url: str) -> Iterator[Finding]:
    try:
        client = redis.Redis.from_url(url, socket_timeout=3, socket_connect_timeout=3)
        try:
            aof = client.config_get("appendonly").get("appendonly")
            save = client.config_get("save").get("save")
        finally:
            client.close()
    except (redis.RedisError, ValueError) as exc:
        raise AppInputError(f"--broker-url {url}: cannot read its persistence settings: {exc}") from None
    if aof != "yes" and not save:
        yield Finding(
            "broker-persistence",
            FAIL,
            "the Redis broker has no AOF and no RDB snapshots: a restart loses every queued and unacked message",
            "appendonly yes (appendfsync everysec)",
            "redis/broker-restart-no-persistence/reference",
            "control-broker-no-persistence",
        )
    elif aof != "yes":
        yield Finding(
            "broker-persistence",
            WARN,
            f"the Redis broker has RDB snapshots only (save {save!r}): a crash loses what came after the last one",
            "appendonly yes",
            "redis/broker-restart-no-persistence/reference",
        )
    else:
        yield Finding("broker-persistence", PASS, "the Redis broker runs with AOF", "")


CHECKS: list[Callable[[Celery], Iterator[Finding]]] = [
    check_serializers,
    check_acks,
    check_visibility_timeout,
    check_prefetch,
    check_soft_shutdown,
    check_time_limits,
    check_results,
    check_ignored_settings,
    check_beat_schedule,
    check_tasks,
    check_explicit,
]


def audit(app: Celery, broker_url: str | None = None) -> list[Finding]:
    findings = [f for check in CHECKS for f in check(app)]
    if broker_url:
        findings += list(check_broker_persistence(broker_url))
    return findings


def summary(findings: list[Finding]) -> dict[str, int]:
    return {s: sum(f.status == s for f in findings) for s in (PASS, WARN, FAIL)}
