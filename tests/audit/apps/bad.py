"""One small app per hazard, each otherwise configured as the audit wants, so each trips one check only."""

from __future__ import annotations

from typing import Any

from celery import Celery

GOOD: dict[str, Any] = {
    "task_serializer": "json",
    "accept_content": ["json"],
    "result_serializer": "json",
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "task_time_limit": 600,
    "task_soft_time_limit": 540,
    "worker_prefetch_multiplier": 1,
    "result_expires": 86400,
    "broker_transport_options": {"visibility_timeout": 900},
    "worker_cancel_long_running_tasks_on_connection_loss": True,
    "broker_connection_retry_on_startup": True,
}


def make(name: str, **changes: Any) -> Celery:
    app = Celery(name, broker="redis://127.0.0.1:1/0", backend="redis://127.0.0.1:1/1", set_as_current=False)
    app.conf.update({**GOOD, **changes})
    return app


good = make("good")
pickle = make("pickle", accept_content=["json", "pickle"])
acks_early = make("acks-early", task_acks_late=False)
no_reject = make("no-reject", task_reject_on_worker_lost=False)
short_visibility = make("short-vt", broker_transport_options={"visibility_timeout": 300})
default_visibility = make("default-vt", broker_transport_options={})
prefetch = make("prefetch", worker_prefetch_multiplier=4)
soft_shutdown = make("soft-shutdown", worker_soft_shutdown_timeout=10)
soft_after_hard = make("soft-after-hard", task_soft_time_limit=700)
no_expiry = make("no-expiry", result_expires=None)
ignored = make("ignored", task_max_retries=3)
beat_dict = make("beat-dict", beat_schedule={"daily": {"task": "x", "schedule": {"hour": 2}}})

retry_unbound = make("retry-unbound")


@retry_unbound.task(name="bad.retry_unbound", shared=False)  # shared tasks join every app
def charge(order: int) -> None:
    if order < 0:
        charge.retry(countdown=5)


backoff = make("backoff")


@backoff.task(name="bad.no_backoff", autoretry_for=(ConnectionError,), shared=False)
def fetch() -> None:
    return None


early_task = make("early-task")


@early_task.task(name="bad.early", acks_late=False, shared=False)
def early() -> None:
    return None


implicit = make("implicit")
implicit.conf.changes.pop("worker_cancel_long_running_tasks_on_connection_loss")


class FromObject:
    """Settings loaded with config_from_object, not conf.update: a second layer of the app's configuration."""

    task_acks_late = True
    task_max_retries = 3  # a Task attribute, ignored as a setting


from_object = make("from-object")
from_object.config_from_object(FromObject)
