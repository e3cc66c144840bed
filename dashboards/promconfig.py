"""Prometheus configuration: the one generated for a local Stack, and where the rule files live.

The compose file's configuration is the static ``dashboards/prometheus/prometheus.yml``; both load the same
rule files, so an alert tested with ``promtool test rules`` is the alert both setups evaluate.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import yaml

if TYPE_CHECKING:
    from lab.stack import Stack

HERE = Path(__file__).resolve().parent
PROM_DIR = HERE / "prometheus"
RULE_FILES = sorted((PROM_DIR / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROM_DIR / "tests").glob("*.yml"))
# Seconds. Short because lab runs last a minute or two and `lab dashboards check` needs several samples.
LOCAL_SCRAPE_INTERVAL = "1s"
# The job names are part of the dashboards' contract: panels select job="celery" and job="api".
JOBS = ("celery", "api", "flower", "locust")


def local_config(targets: dict[str, str], rule_files: list[Path] | None = None) -> dict[str, Any]:
    """A Prometheus config scraping each ``job -> URL`` (a base URL, or one ending in /metrics), with the lab's
    rules."""
    return {
        "global": {
            "scrape_interval": LOCAL_SCRAPE_INTERVAL,
            "evaluation_interval": LOCAL_SCRAPE_INTERVAL,
            "external_labels": {"lab": "local"},
        },
        "rule_files": [str(p) for p in (RULE_FILES if rule_files is None else rule_files)],
        "scrape_configs": [scrape_config(job, url) for job, url in targets.items()],
    }


def scrape_config(job: str, url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    path = parts.path if parts.path.endswith("/metrics") else parts.path.rstrip("/") + "/metrics"
    return {"job_name": job, "metrics_path": path, "static_configs": [{"targets": [parts.netloc]}]}


def add_scrape_target(stack: Stack, job: str, url: str) -> None:
    """Scrape one more endpoint from a running Stack's Prometheus (e.g. job "locust" once a load test serves
    its metrics): rewrite the generated config and reload it with SIGHUP."""
    path = stack.run_dir / "prometheus" / "prometheus.yml"
    config = yaml.safe_load(path.read_text())
    config["scrape_configs"] = [c for c in config["scrape_configs"] if c["job_name"] != job]
    config["scrape_configs"].append(scrape_config(job, url))
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    stack.signal_member("prometheus", signal.SIGHUP)


def write_local_config(path: Path, targets: dict[str, str]) -> Path:
    path.write_text(yaml.safe_dump(local_config(targets), sort_keys=False))
    return path
