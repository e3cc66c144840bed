"""The shop's Celery app: ``celery -A examples.external_app.celery:app worker``."""

from celery import Celery

app = Celery("shop", include=["examples.external_app.tasks"])
app.config_from_object("examples.external_app.settings")
