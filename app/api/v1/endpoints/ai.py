from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import User
from app.db.session import get_async_session
from app.schemas.api import CompletionAccepted, CompletionRequest
from app.tasks.ai import process_ai_completion

router = APIRouter(prefix="/ai", tags=["AI"])


@router.post(
    "/completions",
    response_model=CompletionAccepted,
    status_code=202,
    responses={404: {"description": "no such user"}},
)
async def create_completion(
    data: CompletionRequest, request: Request, session: Annotated[AsyncSession, Depends(get_async_session)]
) -> CompletionAccepted:
    if await session.scalar(select(User.id).where(User.id == data.user_id)) is None:
        raise HTTPException(404, f"user {data.user_id} does not exist")
    request_id = data.request_id or uuid.uuid4().hex
    task = await request.app.state.dispatch(process_ai_completion.delay, request_id, data.prompt, data.user_id)
    return CompletionAccepted(task_id=task.id, request_id=request_id, check_url=f"/api/v1/tasks/{task.id}")
