"""Dependencies shared by the v1 endpoints."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated

from fastapi import Depends, HTTPException
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import User
from app.db.session import get_async_session

Session = Annotated[AsyncSession, Depends(get_async_session)]


async def require_users(session: AsyncSession, user_ids: Iterable[int]) -> None:
    """404 unless every user exists: no task is dispatched for a user that is not there."""
    wanted = set(user_ids)
    found = await session.scalar(select(func.count()).select_from(User).where(User.id.in_(wanted)))
    if found != len(wanted):
        missing = sorted(wanted)[0] if len(wanted) == 1 else "one or more of them"
        raise HTTPException(404, f"user {missing} does not exist")
