"""``celery -A lab.appshim:app``: a user's app with a profile's Celery settings laid over it.

Celery has no command-line option for arbitrary settings, and a worker reads most of them (pool, concurrency,
prefetch) before it imports its ``--include`` modules; so when a profile overlays a user's app, the Stack names
this module as the app. It imports the user's app (LAB_APP, LAB_APP_PATH), lays LAB_APP_CONF (JSON) over its
settings, and is otherwise that very object. Built on first access (PEP 562), never at import.
"""

from __future__ import annotations

import os

from celery import Celery

from lab.apps import app_from_env

_app: Celery | None = None


def __getattr__(name: str) -> Celery:
    global _app
    if name != "app":
        raise AttributeError(name)
    if _app is None:
        _app = app_from_env(os.environ)
    return _app
