from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import Completion
from app.services.ai import CompletionResponse


class ChatRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def save_completion(self, *, request_id: str, user_id: int, prompt: str, response: CompletionResponse) -> None:
        """Idempotent by request_id: a redelivered task (acks_late) overwrites instead of duplicating."""
        row = self.session.scalar(select(Completion).where(Completion.request_id == request_id))
        if row is None:
            row = Completion(request_id=request_id, user_id=user_id, prompt=prompt)
            self.session.add(row)
        row.response = response.text
        row.tokens = response.usage.total_tokens
