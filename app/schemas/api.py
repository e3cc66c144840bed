from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from email_validator import EmailNotValidError, validate_email
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, StringConstraints
from pydantic_core import PydanticCustomError

# An RFC 2047 encoded word ("=?utf-8?q?x?=") is decoded by mail software wherever it stands in a header, so
# an address or subject that contains one is shown (and, for a To header parsed back, delivered) as
# something else: "=?utf-8?q?x?=@example.com" reads "x@example.com".
_ENCODED_WORD = re.compile(r"=\?[^?]*\?[A-Za-z]\?[^?]*\?=")
# Control characters (C0, DEL, C1) and the Unicode line and paragraph separators, which header folding
# treats as line breaks: a CR LF in a subject makes every message of its group fail to build.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _deliverable_email(value: object) -> str:
    """The address as email-validator normalizes it, in the ASCII form an SMTP relay without SMTPUTF8 takes.

    A maintained validator rather than a regex: the old pattern let commas (two recipients), angle brackets,
    quotes and control characters through. Syntax only, no DNS (``check_deliverability=False``): sign-up must
    not depend on a resolver. Non-ASCII local parts are refused (``allow_smtputf8=False``), since smtplib
    cannot send to them through a server that lacks SMTPUTF8; an internationalized domain is kept as its
    IDNA (xn--) form, which every relay takes. What is stored and sent is this return value."""
    if not isinstance(value, str):
        raise PydanticCustomError("email", "an email address must be a string")
    # Spaces around a pasted address are harmless and dropped; anything else email-validator judges.
    value = value.strip(" ")
    try:
        info = validate_email(value, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as exc:
        raise PydanticCustomError("email", "{reason}", {"reason": str(exc)}) from None
    if _ENCODED_WORD.search(info.ascii_email):
        raise PydanticCustomError("email", "an encoded word (=?...?=) is not allowed in an email address")
    return info.ascii_email


def _header_text(value: object) -> object:
    """Refuse what would break or change a mail header; checked before stripping, so a CR LF at either end
    is refused too rather than silently dropped."""
    if isinstance(value, str):
        if _CONTROL.search(value):
            raise PydanticCustomError("header_text", "control characters (CR, LF, NUL, ...) are not allowed here")
        if _ENCODED_WORD.search(value):
            raise PydanticCustomError("header_text", "an encoded word (=?...?=) is not allowed here")
    return value


# The schema says what JSON Schema can (an email, no control characters); email-validator judges the rest.
Email = Annotated[
    str,
    Field(max_length=320, json_schema_extra={"format": "email", "pattern": '^[^\\u0000-\\u0020\\u007f,<>"]+$'}),
    BeforeValidator(_deliverable_email),
]
# JSON Schema for _header_text's rule: no control character (C0, DEL, C1) or line separator, and not blank.
_C = "\\u0000-\\u001f\\u007f-\\u009f\\u2028\\u2029"
NOT_BLANK_HEADER_TEXT = f"^[^{_C}]*[^\\s{_C}][^{_C}]*$"
# A mail subject: one header line, printable, without the spaces header parsing would drop at its start.
Subject = Annotated[
    str,
    BeforeValidator(_header_text),
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    # Documents _header_text's rule (no control characters, no line separators) for clients and fuzzers.
    Field(json_schema_extra={"pattern": NOT_BLANK_HEADER_TEXT}),
]
TaskId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
# Strict in JSON bodies: true, "7" and 216.0 are not ids (pydantic's lax mode coerced them). A path segment is
# text by nature, so the path's id parses the digits.
UserId = Annotated[StrictInt, Field(ge=1, le=2**31 - 1)]
UserIdPath = Annotated[int, Field(ge=1, le=2**31 - 1)]


class ErrorDetail(BaseModel):
    """The body of a 404, 409 or 503: what went wrong, in one line."""

    detail: str


class ValidationErrorBody(BaseModel):
    """The body of a 413 or 422: a one-line message and the details."""

    message: str
    detail: list[dict[str, Any]] = Field(default_factory=list)


_ERRORS: dict[int, tuple[type[BaseModel], str]] = {
    404: (ErrorDetail, "a user the request names does not exist"),
    409: (ErrorDetail, "the email is taken, or a request with this Idempotency-Key is still running"),
    413: (ValidationErrorBody, "the body is larger than API_MAX_BODY_BYTES"),
    422: (ValidationErrorBody, "invalid input (also: an Idempotency-Key reused for another request)"),
    503: (ErrorDetail, "the broker (or the result backend) did not answer within the deadline; see Retry-After"),
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` for the error statuses a route can answer, with their bodies."""
    return {code: {"model": _ERRORS[code][0], "description": _ERRORS[code][1]} for code in codes}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UserCreate(Strict):
    email: Email
    name: Annotated[
        str,
        StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
        Field(json_schema_extra={"pattern": "\\S"}),  # blank after stripping is a 422: the schema says so
    ]


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
    subject: Subject
    body: Annotated[str, StringConstraints(min_length=1, max_length=10000)]


class ChordRequest(Strict):
    items: Annotated[list[Annotated[StrictInt, Field(ge=-(10**6), le=10**6)]], Field(min_length=1, max_length=1000)]


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
