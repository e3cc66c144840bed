"""User endpoints with task dispatching."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from sqlalchemy.exc import IntegrityError

from app.api.deps import Session, require_users
from app.db.models import User, new_signup_token
from app.schemas.api import TaskAccepted, UserCreate, UserIdPath, UserResponse, error_responses
from app.tasks.email import send_welcome_email
from app.tasks.export import export_user_data

router = APIRouter(prefix="/users", tags=["Users"])


@router.post("", response_model=UserResponse, status_code=201, responses=error_responses(409, 413, 422, 503))
async def create_user(data: UserCreate, request: Request, session: Session) -> UserResponse:
    """Create user and send welcome email.

    The user is committed only after the broker accepted the email task: if dispatch fails the request
    fails with 503 and nothing is half-done, so a client retry loses no welcome email. A 503 after the
    dispatch deadline may still publish once the broker recovers; the task carries this attempt's
    ``signup_token`` and skips itself when the row it finds is not this attempt's (rolled back, or its id
    reused by the retry), so the address gets one welcome email.
    """
    user = User(email=data.email, name=data.name, signup_token=new_signup_token())
    session.add(user)
    try:
        await session.flush()
    except IntegrityError:
        raise HTTPException(409, f"a user with email {data.email!r} already exists") from None
    task = await request.app.state.dispatch(send_welcome_email.delay, user.id, user.email, user.signup_token)
    await session.commit()
    return UserResponse(
        id=user.id, email=user.email, name=user.name, created_at=user.created_at, welcome_task_id=task.id
    )


@router.post(
    "/{user_id}/export",
    response_model=TaskAccepted,
    status_code=202,
    responses=error_responses(404, 409, 413, 422, 503),
)
async def request_export(
    user_id: UserIdPath,
    request: Request,
    session: Session,
    export_format: Annotated[Literal["json", "csv"], Query(alias="format")] = "json",
) -> TaskAccepted:
    """Request data export (async). 202, not the guide's 200: the work is accepted, not done."""
    await require_users(session, [user_id])
    task = await request.app.state.dispatch(export_user_data.delay, user_id, export_format)
    return TaskAccepted(task_id=task.id, check_url=f"/api/v1/tasks/{task.id}")
