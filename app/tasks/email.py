"""Email tasks."""

from __future__ import annotations

import smtplib

import structlog
from celery import Task

from app.core.celery import celery_app
from app.services.email import EmailService

logger = structlog.get_logger()

# max_retries and default_retry_delay come from the app's base Task (CELERY_TASK_MAX_RETRIES = 3 and
# CELERY_TASK_DEFAULT_RETRY_DELAY = 60 by default, the guide's values).
# Only failures a retry can cure. The guide retries on any Exception, which retries bugs and bad input too.
TRANSIENT_SMTP = (smtplib.SMTPException, OSError)


@celery_app.task(bind=True)
def send_welcome_email(self: Task, user_id: int, email: str) -> dict[str, object]:
    """Send welcome email to new user."""
    logger.info("Sending welcome email", user_id=user_id, email=email)
    try:
        EmailService().send_welcome(email)
    except TRANSIENT_SMTP as exc:
        logger.error("Failed to send welcome email", user_id=user_id, error=str(exc), retries=self.request.retries)
        # The guide's backoff, 60 s * (retries + 1), with the 60 s taken from CELERY_TASK_DEFAULT_RETRY_DELAY.
        raise self.retry(exc=exc, countdown=self.default_retry_delay * (self.request.retries + 1)) from exc
    logger.info("Welcome email sent", user_id=user_id)
    return {"user_id": user_id, "email": email, "retries": self.request.retries}


@celery_app.task(bind=True)
def send_notification_email(self: Task, user_id: int, subject: str, body: str) -> dict[str, object]:
    """Send notification email."""
    try:
        EmailService().send_notification(user_id, subject, body)
    except TRANSIENT_SMTP as exc:
        logger.error("Failed to send notification", user_id=user_id, error=str(exc))
        raise self.retry(exc=exc, countdown=self.default_retry_delay) from exc
    return {"user_id": user_id, "subject": subject, "retries": self.request.retries}
