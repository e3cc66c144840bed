"""``lab audit``: a Celery app's configuration checked against the guide's checklist and the hazards the chaos
lab measured, without starting a worker."""
