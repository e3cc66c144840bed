"""The seed guide's Celery configuration as written (celery-for-fastapi-guide.md), without its task modules."""

from celery import Celery

celery_app = Celery("worker", broker="redis://localhost:6379/0", backend="redis://localhost:6379/1")

celery_app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    result_serializer="json",
    timezone="UTC",
    enable_utc=True,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    task_time_limit=3600,
    task_soft_time_limit=3000,
    worker_prefetch_multiplier=1,
    worker_concurrency=4,
    result_expires=86400,
    task_default_retry_delay=60,
    task_max_retries=3,
)

celery_app.conf.beat_schedule = {
    "cleanup-every-hour": {"task": "app.tasks.cleanup.cleanup_expired_data", "schedule": 3600.0},
    "daily-report": {"task": "app.tasks.reports.generate_daily_report", "schedule": {"hour": 2, "minute": 0}},
}
