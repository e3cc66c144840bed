"""A small shop's Celery project, written as its team would: it knows nothing of the lab (see README.md)."""
