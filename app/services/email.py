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

    def message(self, to: str, subject: str, body: str) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = self.settings.smtp_from
        msg["To"] = to
        msg["Subject"] = subject
        msg.set_content(body)
        return msg

    def deliver(self, smtp: smtplib.SMTP, to: str, subject: str, body: str) -> None:
        """Send one message on an open connection, to exactly ``to``.

        The envelope recipient is the stored address itself, not what smtplib would parse back out of the To
        header: a header parser reads commas, quotes and encoded words, so the two can differ."""
        smtp.send_message(self.message(to, subject, body), to_addrs=[to])

    def _send(self, to: str, subject: str, body: str) -> None:
        with smtplib.SMTP(
            self.settings.smtp_host, self.settings.smtp_port, timeout=self.settings.smtp_timeout_s
        ) as smtp:
            self.deliver(smtp, to, subject, body)

    def send_welcome(self, email: str) -> None:
        self._send(email, "Welcome!", "Thanks for signing up.")

    def send_notification(self, user_id: int, subject: str, body: str) -> None:
        with sync_session_maker() as session:
            email = session.scalar(select(User.email).where(User.id == user_id))
        if email is None:
            raise LookupError(f"user {user_id} does not exist")
        self._send(email, subject, body)
