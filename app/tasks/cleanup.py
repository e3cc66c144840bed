"""Periodic cleanup (beat: every hour)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog
from sqlalchemy import delete

from app.core.celery import celery_app
from app.core.config import get_settings
from app.db.models import ExportRecord
from app.db.session import sync_session_maker

logger = structlog.get_logger()


def _delete_older_than(directory: Path, cutoff: float) -> int:
    if not directory.is_dir():
        return 0
    removed = 0
    for path in directory.iterdir():
        if path.is_file() and path.stat().st_mtime < cutoff:
            path.unlink(missing_ok=True)
            removed += 1
    return removed


@celery_app.task
def cleanup_expired_data() -> dict[str, int]:
    """Delete exports and reports older than DATA_RETENTION_S, and their database rows."""
    s = get_settings()
    cutoff = time.time() - s.data_retention_s
    files = _delete_older_than(Path(s.export_dir), cutoff) + _delete_older_than(Path(s.report_dir), cutoff)
    with sync_session_maker() as session:
        rows = session.execute(
            delete(ExportRecord).where(
                ExportRecord.created_at < datetime.now(UTC) - timedelta(seconds=s.data_retention_s)
            )
        ).rowcount
        session.commit()
    logger.info("Cleanup done", files_removed=files, rows_removed=rows)
    return {"files_removed": files, "rows_removed": rows or 0}
