"""Command lines: the one place each Stack member's is spelled out.

compose.yaml and deploy/*.service run these same command lines ("python" for PY, their own hosts, ports and
paths); tests/lab/test_compose.py compares them, so the deployment files cannot drift from what the lab runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

from lab.apps import REFERENCE_WORKER_APP as REFERENCE_APP

PY = sys.executable


def init_db_argv() -> list[str]:
    return [PY, "-c", "from app.db.session import init_db; init_db()"]


def api_argv(host: str, port: int | str) -> list[str]:
    argv = [PY, "-m", "uvicorn", "app.main:app", "--host", host, "--port", str(port)]
    return [*argv, "--loop", "uvloop", "--http", "httptools", "--no-access-log"]


def celery_worker_argv(
    hostname: str,
    pool: str | None,
    concurrency: int | str | None,
    include: list[str] | None = None,
    *,
    app: str = REFERENCE_APP,
) -> list[str]:
    """``pool``/``concurrency`` None: the app's own settings decide (a user's app)."""
    argv = [PY, "-m", "celery", "-A", app, "worker", "-n", hostname, "--loglevel", "INFO"]
    argv += ["--pool", pool] if pool else []
    argv += ["--concurrency", str(concurrency)] if concurrency else []
    return [*argv, "--include", ",".join(include)] if include else argv


def beat_argv(schedule: str | Path, *, app: str = REFERENCE_APP) -> list[str]:
    argv = [PY, "-m", "celery", "-A", app, "beat", "--loglevel", "INFO"]
    return [*argv, "-s", str(schedule), "--pidfile="]


def flower_argv(address: str, port: int | str, db: str | Path, *, app: str = REFERENCE_APP) -> list[str]:
    argv = [PY, "-m", "celery", "-A", app, "flower"]
    return [*argv, f"--port={port}", f"--address={address}", f"--db={db}"]


def smtp_sink_argv(host: str, smtp_port: int | str, http_port: int | str, data_dir: str | Path) -> list[str]:
    argv = [PY, "-m", "lab.smtp_sink", "--host", host, "--smtp-port", str(smtp_port)]
    return [*argv, "--http-port", str(http_port), "--data-dir", str(data_dir)]


def ai_stub_argv(host: str, port: int | str, latency: str, error_rate: float | str) -> list[str]:
    argv = [PY, "-m", "lab.ai_stub", "--host", host, "--port", str(port)]
    return [*argv, "--latency", latency, "--error-rate", str(error_rate)]


def netproxy_argv(host: str, port: int | str, upstream: str, control_port: int | str) -> list[str]:
    argv = [PY, "-m", "lab.netproxy", "--host", host, "--port", str(port), "--upstream", upstream]
    return [*argv, "--control-port", str(control_port)]


def exporter_argv(
    host: str, port: int | str, broker_url: str | None = None, new_series_hold_s: float | None = None
) -> list[str]:
    """Without ``broker_url`` the exporter reads CELERY_BROKER_URL (compose: keeps the password off argv)."""
    argv = [PY, "-m", "lab.exporter", "--host", host, "--port", str(port)]
    if new_series_hold_s is not None:
        argv += ["--new-series-hold", str(new_series_hold_s)]
    return [*argv, "--broker-url", broker_url] if broker_url else argv
