"""What every load-test user shares. Only ``config``, ``shapes``, ``metrics`` and ``ledger`` are imported by the
lab process; ``base``, ``polling`` and ``plugin`` import locust and load only inside Locust."""
