"""Celery configuration: the guide's settings, built from Settings.

Differences from the guide, each on purpose:
- The guide's daily beat entry is a plain dict ``{"hour": 2, "minute": 0}``. Beat needs a number of seconds
  or a schedule object; a dict fails when beat loads the schedule. ``crontab(hour=2, minute=0)`` with
  ``timezone="UTC"`` is what it meant.
- Celery's stdlib logging is routed through structlog (``setup_logging``), so workers log like the API.
- The guide's ``task_default_retry_delay=60`` and ``task_max_retries=3`` are not Celery settings: Celery
  ignores both silently and tasks keep its built-in 180 s / 3. Here they are attributes of the app's base
  Task class (``task_cls``), taken from CELERY_TASK_DEFAULT_RETRY_DELAY / CELERY_TASK_MAX_RETRIES.
- A garbage item on the Redis queue list stops a stock worker ("Unrecoverable error"); the broker
  transport here quarantines it instead (app/core/broker.py).
- The API never waits on results, yet stock Celery subscribes it to every sent task's result channel
  (``ReferenceCelery``).
- Redis transport options (visibility timeout, kombu's unacked restore sweep) are explicit: with acks_late a
  message held by a worker that dies comes back only after the visibility timeout, and the lab varies it.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import structlog
from celery import Celery, Task
from celery.backends.redis import RedisBackend
from celery.schedules import crontab
from celery.signals import (
    celeryd_init,
    setup_logging,
    task_postrun,
    task_prerun,
    worker_process_init,
)
from kombu.serialization import prepare_accept_content

from app.core.broker import TRANSPORT as POISON_SAFE_REDIS
from app.core.config import Settings, get_settings
from app.core.logging import configure_logging
from app.core.timeline import TimelineTask

ACCEPT_CONTENT = ["json"]  # never pickle: a pickle body runs code when it is loaded

TASK_MODULES = [
    "app.tasks.email",
    "app.tasks.ai",
    "app.tasks.export",
    "app.tasks.cleanup",
    "app.tasks.reports",
    "app.tasks.workflows",
]


def build_config(s: Settings) -> dict[str, Any]:
    transport: dict[str, Any] = {
        "visibility_timeout": s.celery_visibility_timeout,
        "unacked_restore_interval": s.celery_unacked_restore_interval,
        "unacked_restore_throttle": s.celery_unacked_restore_throttle,
    }
    lab_transport = s.celery_redis_transport == "lab" and s.celery_broker_url.startswith(("redis", "unix"))
    if lab_transport:
        transport["reliable_fetch"] = s.celery_broker_reliable_fetch
        # The channel quarantines items of any other content type before Celery sees them (app/core/broker.py).
        transport["accept_content"] = sorted(prepare_accept_content(ACCEPT_CONTENT))
        if s.celery_broker_reliable_fetch:
            # BLMOVE takes one source list: no per-priority lists (the guide's tasks set no priority).
            transport["priority_steps"] = [0]
    return {
        # Task settings
        "task_serializer": "json",
        "accept_content": ACCEPT_CONTENT,
        "result_serializer": "json",
        "result_accept_content": ["json"],
        "timezone": "UTC",
        "enable_utc": True,
        # Task execution
        "task_acks_late": s.celery_task_acks_late,
        "task_reject_on_worker_lost": s.celery_task_reject_on_worker_lost,
        "task_time_limit": s.celery_task_time_limit or None,
        "task_soft_time_limit": s.celery_task_soft_time_limit or None,
        "task_ignore_result": s.celery_task_ignore_result,
        # Worker settings
        "worker_prefetch_multiplier": s.celery_worker_prefetch_multiplier,
        "worker_concurrency": s.celery_worker_concurrency,
        "worker_pool": s.celery_worker_pool,
        "worker_soft_shutdown_timeout": s.celery_worker_soft_shutdown_timeout,
        "worker_cancel_long_running_tasks_on_connection_loss": (
            s.celery_worker_cancel_long_running_tasks_on_connection_loss
        ),
        "worker_send_task_events": s.celery_worker_send_task_events,
        "task_send_sent_event": s.celery_task_send_sent_event,
        "worker_hijack_root_logger": False,
        # Result settings
        "result_expires": s.celery_result_expires,
        "result_extended": True,
        # Broker
        "broker_connection_retry_on_startup": True,
        "broker_transport": POISON_SAFE_REDIS if lab_transport else None,
        "broker_transport_options": transport,
        "result_backend_transport_options": {"visibility_timeout": s.celery_visibility_timeout},
        # Beat
        "beat_schedule": {
            "cleanup-every-hour": {
                "task": "app.tasks.cleanup.cleanup_expired_data",
                "schedule": 3600.0,
            },
            "daily-report": {
                "task": "app.tasks.reports.generate_daily_report",
                "schedule": crontab(hour=2, minute=0),
            },
        },
    }


def _no_subscription(producer: Any, task_id: str) -> None:
    return None


class ReferenceCelery(Celery):
    """Celery whose Redis result backend does not subscribe the sender to every sent task's result channel.

    Stock Celery does (``RedisBackend.on_task_call``), to speed up a later ``.get()``. The API never calls
    ``.get()``: it reads states by id, so each dispatch left one more subscription on its connection and
    every result was pushed to a client that never reads (measured: 150 dispatches, 150 channels). A caller
    that does wait still subscribes, in ``.get()`` itself. ``app.backend`` is per thread, hence this hook.

    It also keeps the Settings it was built from (``settings``): what its tasks write with (the timeline's
    Redis and expiry), so an app built from explicit Settings does not fall back on the process' env.
    """

    def __init__(self, *args: Any, settings: Settings, **kwargs: Any) -> None:
        self.settings = settings
        super().__init__(*args, **kwargs)

    def __reduce_keys__(self) -> dict[str, Any]:
        # Celery rebuilds an unpickled app from these keyword arguments.
        return {**super().__reduce_keys__(), "settings": self.settings}

    def _get_backend(self) -> Any:
        backend = super()._get_backend()
        if isinstance(backend, RedisBackend):
            backend.on_task_call = _no_subscription
        return backend


def create_celery_app(s: Settings | None = None, *, set_as_current: bool = True) -> Celery:
    s = s or get_settings()

    class AppTask(TimelineTask):
        default_retry_delay = s.celery_task_default_retry_delay
        max_retries = s.celery_task_max_retries

    app = ReferenceCelery(
        "ai-services",
        broker=s.celery_broker_url,
        backend=s.celery_result_backend,
        include=TASK_MODULES,
        set_as_current=set_as_current,
        task_cls=AppTask,
        settings=s,
    )
    app.conf.update(build_config(s))
    return app


# The process' app is built on first use, not at import (PEP 562): importing this module for
# create_celery_app or build_config must not read the environment, so a bad CELERY_* variable stops only a
# process that really needs the app (and stops it there with one line and exit 2, from get_settings).
# "app" and "celery" are the names Celery's find_app tries, in that order, for ``celery -A app.core.celery``.
APP_NAMES = frozenset({"celery_app", "app", "celery"})
_app: Celery | None = None
_app_lock = threading.Lock()

if TYPE_CHECKING:
    celery_app: Celery


def __getattr__(name: str) -> Celery:
    global _app
    if name not in APP_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _app is None:
        # The API's first requests can race here from several threads; one app per process.
        with _app_lock:
            if _app is None:
                _app = create_celery_app()
    return _app


@setup_logging.connect
def _setup_logging(**_: Any) -> None:
    configure_logging()


@celeryd_init.connect
def _init_worker(**_: Any) -> None:
    from app.db.session import init_db

    init_db()


@worker_process_init.connect
def _init_pool_child(**_: Any) -> None:
    from app.db.session import reset_after_fork

    reset_after_fork()


@task_prerun.connect
def _bind_task_context(task_id: str | None = None, task: Task | None = None, **_: Any) -> None:
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(task_id=task_id, task_name=task.name if task else None)


@task_postrun.connect
def _unbind_task_context(**_: Any) -> None:
    structlog.contextvars.clear_contextvars()
