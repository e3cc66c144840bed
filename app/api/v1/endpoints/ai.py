from __future__ import annotations

import uuid

from fastapi import APIRouter, Request

from app.api.deps import Session, require_users
from app.schemas.api import CompletionAccepted, CompletionRequest, error_responses
from app.tasks.ai import process_ai_completion

router = APIRouter(prefix="/ai", tags=["AI"])


@router.post(
    "/completions",
    response_model=CompletionAccepted,
    status_code=202,
    responses=error_responses(404, 409, 413, 422, 503),
)
async def create_completion(data: CompletionRequest, request: Request, session: Session) -> CompletionAccepted:
    await require_users(session, [data.user_id])
    request_id = data.request_id or uuid.uuid4().hex
    task = await request.app.state.dispatch(process_ai_completion.delay, request_id, data.prompt, data.user_id)
    return CompletionAccepted(task_id=task.id, request_id=request_id, check_url=f"/api/v1/tasks/{task.id}")
