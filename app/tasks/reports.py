"""Daily report (beat: 02:00 UTC)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from app.core.celery import celery_app
from app.core.config import get_settings
from app.db.models import Completion, ExportRecord, User
from app.db.session import sync_session_maker


@celery_app.task
def generate_daily_report() -> dict[str, Any]:
    """Count the last 24 hours' sign-ups, completions, tokens and exports; write them as JSON."""
    now = datetime.now(UTC)
    since = now - timedelta(days=1)
    with sync_session_maker() as session:
        report = {
            "generated_at": now.isoformat(),
            "since": since.isoformat(),
            "new_users": session.scalar(select(func.count()).select_from(User).where(User.created_at >= since)),
            "completions": session.scalar(
                select(func.count()).select_from(Completion).where(Completion.created_at >= since)
            ),
            "tokens": session.scalar(
                select(func.coalesce(func.sum(Completion.tokens), 0)).where(Completion.created_at >= since)
            ),
            "exports": session.scalar(
                select(func.count()).select_from(ExportRecord).where(ExportRecord.created_at >= since)
            ),
        }
    out = Path(get_settings().report_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"daily-{now:%Y-%m-%d}.json"
    path.write_text(json.dumps(report, indent=2))
    return {**report, "path": str(path)}
