"""Settings, the Celery app, the broker transport, logging, metrics, the cache and task timelines."""
