"""A worker of the reference app carries only what it runs: what it imports, read in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys

from lab.profiles import ROOT

# What ``celery -A app.core.celery worker`` imports before its first task: the app, its task modules, the
# consumer and the prefork pool.
WORKER_IMPORTS = (
    "import app.core.celery as c; c.celery_app.loader.import_default_modules(); "
    "import celery.worker.consumer, celery.concurrency.prefork; import sys, json; "
    "print(json.dumps(sorted(sys.modules)))"
)
# The lab's tooling and the API's server: none has any business in a worker. (rich is not listed: structlog
# imports it whenever it is installed, as it is in the lab's environment; app/'s own dependencies do not
# include it.)
FORBIDDEN = {
    "lab", "chaos", "bench", "loadtests", "dashboards", "audit", "orchestration",
    "locust", "gevent", "matplotlib", "scipy", "numpy", "grafana_foundation_sdk", "typer", "flower",
    "aiosmtpd", "psutil", "fastapi", "uvicorn", "starlette",
}  # fmt: skip


def test_a_reference_worker_imports_no_lab_tooling_and_no_api_server() -> None:
    out = subprocess.run([sys.executable, "-c", WORKER_IMPORTS], capture_output=True, text=True, cwd=ROOT, check=True)
    tops = {name.split(".")[0] for name in json.loads(out.stdout)}
    assert {"celery", "kombu", "billiard", "app"} <= tops  # it did import a worker
    assert tops & FORBIDDEN == set()
