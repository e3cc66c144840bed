"""The guide's canvas examples as real tasks: chain, group, chord.

The arithmetic lives in pure functions (``process_value``, ``aggregate``) so it can be property-tested; the
tasks only move data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celery import chain, chord, group
from celery.result import AsyncResult, GroupResult

from app.core.cache import cache_get, cache_set
from app.core.celery import celery_app
from app.core.config import get_settings
from app.tasks.email import send_notification_email
from app.tasks.export import fetch_activity_data, fetch_user_data


def process_value(item: int) -> int:
    return item * item


def aggregate(results: list[int]) -> dict[str, int]:
    return {"count": len(results), "total": sum(results)}


@celery_app.task
def fetch_data(user_id: int) -> dict[str, Any]:
    return {"user": fetch_user_data(user_id), "activity": fetch_activity_data(user_id)}


@celery_app.task
def process_data(data: dict[str, Any]) -> dict[str, Any]:
    activity = data["activity"]
    return {
        "user_id": data["user"]["id"],
        "completions": len(activity),
        "tokens": sum(a.get("tokens", 0) for a in activity),
    }


@celery_app.task
def save_results(summary: dict[str, Any]) -> dict[str, Any]:
    return {**summary, "saved": True}


@celery_app.task
def process_item(item: int) -> int:
    return process_value(item)


@celery_app.task
def aggregate_results(results: list[int]) -> dict[str, int]:
    return aggregate(results)


def workflow_key(workflow_id: str) -> str:
    return f"workflow:{workflow_id}"


@dataclass(frozen=True)
class StartedWorkflow:
    id: str
    kind: str
    children: list[str]


def remember_workflow(workflow_id: str, kind: str, children: list[str]) -> StartedWorkflow:
    """Record a workflow's member task ids so the status endpoint can report each of them."""
    ttl = max(get_settings().celery_result_expires, 60)
    cache_set(workflow_key(workflow_id), {"kind": kind, "children": children}, ttl=ttl)
    return StartedWorkflow(workflow_id, kind, children)


def recall_workflow(workflow_id: str) -> dict[str, Any] | None:
    return cache_get(workflow_key(workflow_id))


def _unfollow(results: list[AsyncResult]) -> None:
    """Drop the result-channel subscriptions ``group.apply_async`` takes for its barrier (``res.then``).

    Callers here read states by id, so the subscriptions would only pile up (for a chord header they outlive
    the request: measured). A caller that does wait calls ``.get()``, which subscribes again. Unsubscribing by
    id, as Celery does once a result is fulfilled: the header results of a chord are other objects."""
    consumer = getattr(celery_app.backend, "result_consumer", None)
    if consumer is not None:
        for result in results:
            consumer.cancel_for(result.id)


def start_chain(user_id: int) -> StartedWorkflow:
    """fetch_data -> process_data -> save_results; the returned id is the last task's."""
    result = chain(fetch_data.s(user_id), process_data.s(), save_results.s()).apply_async()
    ids: list[str] = []
    node: AsyncResult | None = result
    while node is not None:
        ids.append(node.id)
        node = node.parent
    return remember_workflow(result.id, "chain", list(reversed(ids)))


def start_group(user_ids: list[int], subject: str, body: str) -> StartedWorkflow:
    result: GroupResult = group(send_notification_email.s(uid, subject, body) for uid in user_ids).apply_async()
    _unfollow(result.results)
    return remember_workflow(result.id, "group", [child.id for child in result.results])


def start_chord(items: list[int]) -> StartedWorkflow:
    """process_item for each item in parallel, then aggregate_results; the returned id is the callback's."""
    result = chord([process_item.s(i) for i in items], aggregate_results.s()).apply_async()
    header = result.parent
    if header is not None:
        _unfollow(header.results)
    return remember_workflow(result.id, "chord", [c.id for c in header.results] if header is not None else [])
