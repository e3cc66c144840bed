"""A worker app built from explicit Settings that differ from its process' env (tests/app/test_timeline.py).

``celery -A tests.app.timeline_app worker`` runs with the Stack-like env (CACHE_URL, CELERY_RESULT_EXPIRES);
the app's own cache and expiry come from TIMELINE_TEST_CACHE_URL and TIMELINE_TEST_RESULT_EXPIRES, as a
program embedding the reference app would pass them. A timeline written from the env lands elsewhere.
"""

from __future__ import annotations

import os

from celery import Celery

from app.core.celery import create_celery_app
from app.core.config import settings_from

app: Celery = create_celery_app(
    settings_from(
        None,
        cache_url=os.environ["TIMELINE_TEST_CACHE_URL"],
        celery_result_expires=int(os.environ["TIMELINE_TEST_RESULT_EXPIRES"]),
    )
)
