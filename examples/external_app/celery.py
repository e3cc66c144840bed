"""The shop's Celery app: ``celery -A examples.external_app.celery:app worker``.

Module names are relative to this package, so the project can be copied anywhere under any name.
"""

from celery import Celery

app = Celery("shop", include=[f"{__package__}.tasks"])
app.config_from_object(f"{__package__}.settings")
