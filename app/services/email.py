"""Email over real SMTP (smtplib). Locally the Stack runs an SMTP sink; in production point SMTP_HOST at a relay."""

from __future__ import annotations

import smtplib
from email.message import EmailMessage

from sqlalchemy import select

from app.core.config import Settings, get_settings
from app.db.models import User
from app.db.session import sync_session_maker


class EmailService:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()

    def _send(self, to: str, subject: str, body: str) -> None:
        msg = EmailMessage()
        msg["From"] = self.settings.smtp_from
        msg["To"] = to
        msg["Subject"] = subject
        msg.set_content(body)
        with smtplib.SMTP(
            self.settings.smtp_host, self.settings.smtp_port, timeout=self.settings.smtp_timeout_s
        ) as smtp:
            smtp.send_message(msg)

    def send_welcome(self, email: str) -> None:
        self._send(email, "Welcome!", "Thanks for signing up.")

    def send_notification(self, user_id: int, subject: str, body: str) -> None:
        with sync_session_maker() as session:
            email = session.scalar(select(User.email).where(User.id == user_id))
        if email is None:
            raise LookupError(f"user {user_id} does not exist")
        self._send(email, subject, body)
