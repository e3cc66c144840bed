"""Locust load scenarios for the reference system, and the lab side that runs them (``lab load``).

Layout (as Locust's docs suggest for larger test suites): ``common/`` holds what every user shares (scenario
config, the FastHttpUser base with its response checks, task polling, the Prometheus exporter), ``flows/``
holds one module per user flow, ``locustfile.py`` is what ``locust -f`` loads, and ``scenarios.toml`` names
the scenarios. ``runner.py``, ``summary.py`` and ``cli.py`` run in the lab process and never import locust:
Locust monkey-patches the standard library through gevent, so it always runs as a child process.
"""
