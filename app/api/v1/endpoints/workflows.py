"""Endpoints that start the guide's canvas examples: chain, group, chord."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import User
from app.db.session import get_async_session
from app.schemas.api import ChainRequest, ChordRequest, GroupRequest, TaskAccepted
from app.tasks.workflows import StartedWorkflow, start_chain, start_chord, start_group

router = APIRouter(prefix="/workflows", tags=["Workflows"])
Session = Annotated[AsyncSession, Depends(get_async_session)]


async def _require_users(session: AsyncSession, user_ids: list[int]) -> None:
    wanted = set(user_ids)
    found = await session.scalar(select(func.count()).select_from(User).where(User.id.in_(wanted)))
    if found != len(wanted):
        raise HTTPException(404, "one or more users do not exist")


def _accepted(wf: StartedWorkflow) -> TaskAccepted:
    return TaskAccepted(task_id=wf.id, check_url=f"/api/v1/tasks/{wf.id}", children=wf.children)


@router.post("/chain", response_model=TaskAccepted, status_code=202)
async def chain_workflow(data: ChainRequest, request: Request, session: Session) -> TaskAccepted:
    await _require_users(session, [data.user_id])
    result = await request.app.state.dispatch(start_chain, data.user_id)
    return _accepted(result)


@router.post("/group", response_model=TaskAccepted, status_code=202)
async def group_workflow(data: GroupRequest, request: Request, session: Session) -> TaskAccepted:
    await _require_users(session, data.user_ids)
    result = await request.app.state.dispatch(start_group, data.user_ids, data.subject, data.body)
    return _accepted(result)


@router.post("/chord", response_model=TaskAccepted, status_code=202)
async def chord_workflow(data: ChordRequest, request: Request) -> TaskAccepted:
    result = await request.app.state.dispatch(start_chord, data.items)
    return _accepted(result)
