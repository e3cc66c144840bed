"""Endpoints that start the guide's canvas examples: chain, group, chord."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.api.deps import Session, require_users
from app.schemas.api import ChainRequest, ChordRequest, GroupRequest, TaskAccepted, error_responses
from app.tasks.workflows import StartedWorkflow, start_chain, start_chord, start_group

router = APIRouter(prefix="/workflows", tags=["Workflows"])


def _accepted(wf: StartedWorkflow) -> TaskAccepted:
    return TaskAccepted(task_id=wf.id, check_url=f"/api/v1/tasks/{wf.id}", children=wf.children)


@router.post("/chain", response_model=TaskAccepted, status_code=202, responses=error_responses(404, 409, 413, 422, 503))
async def chain_workflow(data: ChainRequest, request: Request, session: Session) -> TaskAccepted:
    await require_users(session, [data.user_id])
    result = await request.app.state.dispatch(start_chain, data.user_id, tasks=3)
    return _accepted(result)


@router.post("/group", response_model=TaskAccepted, status_code=202, responses=error_responses(404, 409, 413, 422, 503))
async def group_workflow(data: GroupRequest, request: Request, session: Session) -> TaskAccepted:
    await require_users(session, data.user_ids)
    result = await request.app.state.dispatch(
        start_group, data.user_ids, data.subject, data.body, tasks=len(data.user_ids)
    )
    return _accepted(result)


@router.post("/chord", response_model=TaskAccepted, status_code=202, responses=error_responses(409, 413, 422, 503))
async def chord_workflow(data: ChordRequest, request: Request) -> TaskAccepted:
    result = await request.app.state.dispatch(start_chord, data.items, tasks=len(data.items) + 1)
    return _accepted(result)
