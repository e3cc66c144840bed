from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

Email = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$"),
]
TaskId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
UserId = Annotated[int, Field(ge=1, le=2**31 - 1)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UserCreate(Strict):
    email: Email
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class UserResponse(BaseModel):
    id: int
    email: str
    name: str
    created_at: datetime
    welcome_task_id: str


class TaskAccepted(BaseModel):
    task_id: str
    status: Literal["pending"] = "pending"
    check_url: str
    children: list[str] = Field(default_factory=list)


class CompletionRequest(Strict):
    prompt: Annotated[str, StringConstraints(min_length=1, max_length=8000)]
    user_id: UserId
    request_id: TaskId | None = None


class CompletionAccepted(TaskAccepted):
    request_id: str


class ChainRequest(Strict):
    user_id: UserId


class GroupRequest(Strict):
    user_ids: Annotated[list[UserId], Field(min_length=1, max_length=100)]
    subject: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    body: Annotated[str, StringConstraints(min_length=1, max_length=10000)]


class ChordRequest(Strict):
    items: Annotated[list[Annotated[int, Field(ge=-(10**6), le=10**6)]], Field(min_length=1, max_length=1000)]


class TaskStatus(BaseModel):
    task_id: str
    status: str
    message: str | None = None
    progress: dict[str, Any] | None = None
    result: Any = None
    error: str | None = None
    retries: int | None = None
    kind: Literal["task", "chain", "group", "chord"] = "task"
    children: list[dict[str, Any]] | None = None
    timeline: dict[str, Any] | None = None
