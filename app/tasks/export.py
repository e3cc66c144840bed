"""Export tasks with progress tracking."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

import structlog
from celery import Task
from sqlalchemy import select

from app.core.cache import cache_set
from app.core.celery import celery_app
from app.core.config import get_settings
from app.db.models import Completion, ExportRecord, User
from app.db.session import sync_session_maker
from app.tasks.progress import progress

logger = structlog.get_logger()
EXPORT_FORMATS = ("json", "csv")
PROGRESS_TTL = 3600


def export_progress_key(task_id: str) -> str:
    return f"export_progress:{task_id}"


def fetch_user_data(user_id: int) -> dict[str, Any]:
    with sync_session_maker() as session:
        user = session.get(User, user_id)
        if user is None:
            raise LookupError(f"user {user_id} does not exist")
        return {
            "id": user.id,
            "email": user.email,
            "name": user.name,
            "created_at": user.created_at.isoformat(),
        }


def fetch_activity_data(user_id: int) -> list[dict[str, Any]]:
    with sync_session_maker() as session:
        rows = session.scalars(select(Completion).where(Completion.user_id == user_id).order_by(Completion.id))
        return [
            {
                "kind": "completion",
                "request_id": r.request_id,
                "tokens": r.tokens,
                "created_at": r.created_at.isoformat(),
            }
            for r in rows
        ]


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(value: object) -> object:
    """A cell a spreadsheet will not run: text starting like a formula (OWASP's list) gets a leading quote."""
    return f"'{value}" if isinstance(value, str) and value.startswith(FORMULA_START) else value


def generate_export(task_id: str, user: dict[str, Any], activity: list[dict[str, Any]], fmt: str) -> Path:
    out_dir = Path(get_settings().export_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"user-{user['id']}-{task_id}.{fmt}"
    tmp = path.with_suffix(path.suffix + ".tmp")
    if fmt == "json":
        tmp.write_text(json.dumps({"user": user, "activity": activity}, indent=2))
    else:
        with tmp.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["section", "key", "value"])
            writer.writerows(["user", k, csv_safe(v)] for k, v in user.items())
            for i, item in enumerate(activity):
                writer.writerows(["activity", f"{i}.{k}", csv_safe(v)] for k, v in item.items())
    tmp.replace(path)  # a redelivered run overwrites atomically; readers never see half a file
    with sync_session_maker() as session:
        if session.scalar(select(ExportRecord).where(ExportRecord.task_id == task_id)) is None:
            session.add(ExportRecord(task_id=task_id, user_id=user["id"], format=fmt, path=str(path)))
            session.commit()
    return path


@celery_app.task(bind=True)
def export_user_data(self: Task, user_id: int, export_format: str) -> dict[str, Any]:
    """Export user data with progress updates."""
    if export_format not in EXPORT_FORMATS:
        # The API validates too; a task must not trust its message.
        raise ValueError(f"export_format must be one of {EXPORT_FORMATS}, got {export_format!r}")
    task_id = self.request.id
    total_steps = 4
    delay = get_settings().export_step_delay_s

    def update_progress(step: int, message: str) -> None:
        state = progress(step, total_steps, message)
        cache_set(export_progress_key(task_id), state, ttl=PROGRESS_TTL)
        self.update_state(state="PROGRESS", meta=state)
        if delay and step < total_steps:
            time.sleep(delay)

    try:
        update_progress(1, "Fetching user data...")
        user_data = fetch_user_data(user_id)
        update_progress(2, "Fetching activity history...")
        activity_data = fetch_activity_data(user_id)
        update_progress(3, "Generating export file...")
        file_path = generate_export(task_id, user_data, activity_data, export_format)
        update_progress(4, "Complete!")
        # The file's name under EXPORT_DIR, not the server's absolute path (the result is public).
        return {"status": "completed", "file": file_path.name, "format": export_format}
    except Exception as exc:
        logger.error("Export failed", user_id=user_id, error=str(exc))
        raise
