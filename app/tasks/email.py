"""Email tasks."""

from __future__ import annotations

import smtplib
import time
from typing import Literal

import structlog
from celery import Task
from sqlalchemy import select

from app.core.celery import celery_app
from app.core.config import get_settings
from app.db.models import User
from app.db.session import sync_session_maker
from app.services.email import EmailService

logger = structlog.get_logger()


def _is_4xx(code: int) -> bool:
    return 400 <= code < 500


def is_transient_smtp(exc: BaseException) -> bool:
    """Whether sending again can cure this failure: a 4xx reply or a broken connection, never a 5xx.

    The guide retries on any Exception, which retries bugs and bad input too; a 5xx (recipient, sender or data
    refused, authentication failed) is the server's final answer, and asking again only delays the failure.
    """
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return True
    if isinstance(exc, smtplib.SMTPConnectError):
        # A greeting other than 220: 421 (busy) or a garbled one (-1) is the connection's weather; 554 is
        # the server saying it will not talk to us.
        return not 500 <= exc.smtp_code < 600
    if isinstance(exc, smtplib.SMTPResponseException):
        return _is_4xx(exc.smtp_code)
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        # Raised when every recipient was refused, each with its own reply; any 5xx among them stays a 5xx.
        codes = [code for code, _msg in exc.recipients.values()]
        return bool(codes) and all(_is_4xx(code) for code in codes)
    if isinstance(exc, smtplib.SMTPException):
        # No reply code: the server lacks what we need (AUTH, STARTTLS, SMTPUTF8), which is configuration.
        return False
    # smtplib.SMTPException is an OSError too, hence last: refused or reset connections, timeouts, DNS.
    return isinstance(exc, OSError)


SignupState = Literal["ours", "another user", "no such user"]


def signup_state(user_id: int, signup_token: str) -> tuple[SignupState, str | None]:
    """Whether the user row ``user_id`` is the sign-up that carries ``signup_token``, and its stored email."""
    with sync_session_maker() as session:
        row = session.execute(select(User.email, User.signup_token).where(User.id == user_id)).first()
    if row is None:
        return "no such user", None
    return ("ours" if row.signup_token == signup_token else "another user"), row.email


def wait_for_signup(user_id: int, signup_token: str, timeout: float) -> tuple[SignupState, str | None]:
    """The sign-up's state once it is decided: the API commits the row only after this task was published,
    so "no such user" is final only once ``timeout`` has passed; "another user" is final at once (the id
    was reused by a later sign-up, so this one was rolled back)."""
    deadline = time.monotonic() + timeout
    while True:
        state, email = signup_state(user_id, signup_token)
        if state != "no such user" or time.monotonic() >= deadline:
            return state, email
        time.sleep(0.05)  # the commit is normally a few milliseconds behind the publish


# max_retries and default_retry_delay come from the app's base Task (CELERY_TASK_MAX_RETRIES = 3 and
# CELERY_TASK_DEFAULT_RETRY_DELAY = 60 by default, the guide's values).
@celery_app.task(bind=True)
def send_welcome_email(self: Task, user_id: int, email: str, signup_token: str | None = None) -> dict[str, object]:
    """Send welcome email to new user.

    With ``signup_token`` (the API always passes it) the email goes out only if user ``user_id`` is that
    sign-up, to its stored address: a sign-up answered 503 (dispatch timed out) was rolled back, yet its task
    may still reach the broker when it recovers, and the client's retry sends its own email. Without it
    (messages queued before the token existed, the lab's probes) the task sends to ``email`` as it always did.
    """
    if signup_token is not None:
        state, stored = wait_for_signup(user_id, signup_token, get_settings().welcome_email_signup_wait_s)
        if state != "ours":
            logger.warning("Welcome email skipped: its sign-up was not committed", user_id=user_id, reason=state)
            return {"user_id": user_id, "email": email, "skipped": state}
        email = stored or email
    logger.info("Sending welcome email", user_id=user_id, email=email)
    try:
        EmailService().send_welcome(email)
    except OSError as exc:
        transient = is_transient_smtp(exc)
        logger.error(
            "Failed to send welcome email",
            user_id=user_id,
            error=str(exc),
            retries=self.request.retries,
            transient=transient,
        )
        if not transient:
            raise
        # The guide's backoff, 60 s * (retries + 1), with the 60 s taken from CELERY_TASK_DEFAULT_RETRY_DELAY.
        raise self.retry(exc=exc, countdown=self.default_retry_delay * (self.request.retries + 1)) from exc
    logger.info("Welcome email sent", user_id=user_id)
    return {"user_id": user_id, "email": email, "retries": self.request.retries}


@celery_app.task(bind=True)
def send_notification_email(self: Task, user_id: int, subject: str, body: str) -> dict[str, object]:
    """Send notification email."""
    try:
        EmailService().send_notification(user_id, subject, body)
    except OSError as exc:
        transient = is_transient_smtp(exc)
        logger.error("Failed to send notification", user_id=user_id, error=str(exc), transient=transient)
        if not transient:
            raise
        raise self.retry(exc=exc, countdown=self.default_retry_delay) from exc
    return {"user_id": user_id, "subject": subject, "retries": self.request.retries}
