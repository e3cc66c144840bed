"""AI processing tasks."""

from __future__ import annotations

from typing import Any

import structlog
from celery import Task

from app.core.celery import celery_app
from app.core.config import get_settings
from app.db.session import sync_session_maker
from app.repositories.chat import ChatRepository
from app.services.ai import AIService, AIServiceError

logger = structlog.get_logger()
settings = get_settings()


@celery_app.task(bind=True, soft_time_limit=settings.ai_soft_time_limit)
def process_ai_completion(self: Task, request_id: str, prompt: str, user_id: int) -> dict[str, Any]:
    """Process AI completion request."""
    logger.info("Processing AI completion", request_id=request_id)
    try:
        response = AIService().generate_completion(prompt)
    except AIServiceError as exc:
        logger.error("AI completion failed", request_id=request_id, error=str(exc), transient=exc.transient)
        if not exc.transient:
            raise  # a 4xx will not get better by asking again
        raise self.retry(exc=exc, countdown=settings.ai_retry_countdown) from exc

    # The guide holds a DB session open across the (slow) AI call; open it only to save.
    with sync_session_maker() as session:
        ChatRepository(session).save_completion(
            request_id=request_id, user_id=user_id, prompt=prompt, response=response
        )
        session.commit()
    tokens = response.usage.total_tokens
    logger.info("AI completion processed", request_id=request_id, tokens=tokens)
    return {"request_id": request_id, "status": "completed", "tokens": tokens}
