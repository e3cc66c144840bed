"""Task status endpoints."""

from __future__ import annotations

from typing import Any

from celery.result import AsyncResult
from fastapi import APIRouter, Request

from app.core.cache import cache_get
from app.core.celery import celery_app
from app.core.timeline import read_timeline
from app.schemas.api import TaskId, TaskStatus, error_responses
from app.tasks.export import export_progress_key
from app.tasks.workflows import recall_workflow

router = APIRouter(prefix="/tasks", tags=["Tasks"])


def group_status(states: list[str]) -> str:
    """One state for a group from its children's states."""
    if states and all(s == "SUCCESS" for s in states):
        return "SUCCESS"
    if any(s in {"FAILURE", "REVOKED"} for s in states):
        return "FAILURE"
    if all(s == "PENDING" for s in states):
        return "PENDING"
    return "STARTED"


def _json_safe(value: Any) -> Any:
    return value if isinstance(value, (dict, list, str, int, float, bool, type(None))) else repr(value)


def describe(result: AsyncResult) -> TaskStatus:
    # One read of the backend: ``.status`` and ``.info`` fetch separately, and a task can move on between
    # them (PROGRESS paired with the final result).
    meta = result.backend.get_task_meta(result.id)
    status = meta.get("status", "PENDING")
    info = meta.get("result")
    out = TaskStatus(task_id=result.id, status=status, retries=meta.get("retries"))
    if status == "PENDING":
        out.message = "Task is waiting to be processed"
    elif status == "PROGRESS":
        out.progress = info if isinstance(info, dict) else cache_get(export_progress_key(result.id))
    elif status == "SUCCESS":
        out.result = _json_safe(info)
    elif status in {"FAILURE", "RETRY", "REVOKED"}:
        out.error = str(info)
        if status == "RETRY":
            out.message = "Task failed and will be retried"
    return out


@router.get(
    "/{task_id}",
    response_model=TaskStatus,
    response_model_exclude_none=True,
    responses=error_responses(422, 503),
)
async def get_task_status(task_id: TaskId, request: Request) -> TaskStatus:
    """Get task status and result; for a chain, group or chord also each member's state."""
    # AsyncResult reads the result backend with blocking calls: off the event loop, under the dispatch deadline.
    status: TaskStatus = await request.app.state.dispatch.read(_task_status, task_id)
    return status


def _task_status(task_id: str) -> TaskStatus:
    workflow = recall_workflow(task_id)
    children = None
    if workflow:
        children = [describe(celery_app.AsyncResult(c)).model_dump(exclude_none=True) for c in workflow["children"]]
    if workflow and workflow["kind"] == "group":
        assert children is not None
        status = group_status([c["status"] for c in children])
        out = TaskStatus(task_id=task_id, status=status, kind="group", children=children)
        if status == "SUCCESS":
            out.result = [c.get("result") for c in children]
        return out
    out = describe(celery_app.AsyncResult(task_id))
    if workflow:
        out.kind = workflow["kind"]
        out.children = children
    out.timeline = read_timeline(task_id)
    return out
