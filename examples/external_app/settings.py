"""The shop's Celery settings (``app.config_from_object``), read from the shop's own environment variables."""

import os

broker_url = os.environ.get("SHOP_BROKER_URL", "redis://localhost:6379/0")
result_backend = os.environ.get("SHOP_RESULT_BACKEND", "redis://localhost:6379/1")

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]

# A killed worker's task is delivered again, not acknowledged with it.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
worker_concurrency = 2

# Redis: a dead worker's unacknowledged messages come back after visibility_timeout; the sweep that returns
# them runs every second instead of every tenth poll. Above the longest order (a few seconds), far below
# kombu's one-hour default.
broker_transport_options = {"visibility_timeout": 6, "unacked_restore_interval": 1, "unacked_restore_throttle": 1}

result_expires = 3600
task_track_started = True

# Deliberately missing: task_soft_time_limit / task_time_limit. `lab audit` reports it (time-limits: warn).
