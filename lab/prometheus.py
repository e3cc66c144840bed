"""Prometheus as a Stack member: its generated configuration, its runtime targets, and its HTTP client.

Scrape targets are files (Prometheus' ``file_sd_configs``), one per job under ``<data>/targets/``: adding a
target while Prometheus runs (job "locust" once a load test serves its metrics) is writing one file, which
Prometheus watches, rather than rewriting the YAML and sending SIGHUP. The job names are part of the
dashboards' contract: panels select job="celery" and job="api".
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import yaml

from lab.procs import Proc, free_port, require_binary, start_on_free_port, wait_until
from lab.profiles import ROOT

# The rules every Stack's Prometheus evaluates. They belong to the dashboards use (which tests them with
# promtool); the member reads them as data by path, so a Stack started by any use evaluates the same alerts
# without the core importing that use.
DEFAULT_RULES_DIR = ROOT / "dashboards" / "prometheus" / "rules"
# Short because lab runs last a minute or two and `lab dashboards check` needs several samples.
LOCAL_SCRAPE_INTERVAL = "1s"
# How long the exporter shows a new series at 0 (lab/series_hold.py): over two scrape intervals, so a scrape
# that comes late still stores the 0 before the first count.
HOLD_SCRAPES = 2.5


def new_series_hold(scrape_interval: str) -> float:
    """The exporter's --new-series-hold for a Prometheus scraping every ``scrape_interval`` ("1s", "15s",
    "1m")."""
    units = {"ms": 0.001, "s": 1.0, "m": 60.0}
    for suffix in sorted(units, key=len, reverse=True):
        if scrape_interval.endswith(suffix) and scrape_interval[: -len(suffix)].replace(".", "", 1).isdigit():
            return HOLD_SCRAPES * float(scrape_interval[: -len(suffix)]) * units[suffix]
    raise ValueError(f"scrape interval {scrape_interval!r} is not a duration like 1s, 15s or 1m")


JOBS = ("celery", "api", "flower", "locust")


def target_entry(url: str) -> dict[str, Any]:
    """One file_sd entry for an endpoint given as a base URL or one ending in /metrics."""
    parts = urlsplit(url)
    path = parts.path if parts.path.endswith("/metrics") else parts.path.rstrip("/") + "/metrics"
    return {"targets": [parts.netloc], "labels": {"__metrics_path__": path}}


def local_config(targets_dir: Path, jobs: tuple[str, ...], rule_files: list[Path]) -> dict[str, Any]:
    """A Prometheus config whose every job reads its targets from ``targets_dir/<job>.json``."""
    return {
        "global": {
            "scrape_interval": LOCAL_SCRAPE_INTERVAL,
            "evaluation_interval": LOCAL_SCRAPE_INTERVAL,
            "external_labels": {"lab": "local"},
        },
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [
            {
                "job_name": job,
                "file_sd_configs": [{"files": [str(targets_dir / f"{job}.json")], "refresh_interval": "1s"}],
            }
            for job in jobs
        ],
    }


class Prometheus:
    """A Prometheus of the Stack's own: free port, own TSDB under ``data_dir``, targets as files."""

    def __init__(
        self,
        data_dir: Path,
        rule_files: list[Path] | None = None,
        jobs: tuple[str, ...] = JOBS,
        *,
        tsdb: Path | None = None,
        retention: str = "2d",
    ) -> None:
        """``tsdb``: serve that TSDB instead of a new one under ``data_dir`` (``lab report`` reads a finished
        run's data this way, with no jobs and a long retention so nothing is dropped)."""
        self.data_dir = data_dir
        self.tsdb = tsdb or data_dir / "tsdb"
        self.retention = retention
        self.targets_dir = data_dir / "targets"
        self.rule_files = sorted(DEFAULT_RULES_DIR.glob("*.yml")) if rule_files is None else rule_files
        self.jobs = jobs
        self.url = ""
        self.port = 0

    @property
    def config_path(self) -> Path:
        return self.data_dir / "prometheus.yml"

    def set_target(self, job: str, url: str) -> None:
        """Scrape ``url`` as ``job`` from now on (replacing the job's target). Atomic: Prometheus never reads
        a half-written file."""
        self.targets_dir.mkdir(parents=True, exist_ok=True)
        path = self.targets_dir / f"{job}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps([target_entry(url)]))
        os.replace(tmp, path)

    def start(self, log_path: Path, ready_timeout: float) -> Proc:
        binary = require_binary("prometheus", "prometheus")
        self.targets_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            yaml.safe_dump(local_config(self.targets_dir, self.jobs, self.rule_files), sort_keys=False)
        )

        def launch(port: int) -> Proc:
            argv = [
                binary,
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.tsdb}",
                f"--web.listen-address=127.0.0.1:{port}",
                f"--storage.tsdb.retention.time={self.retention}",
            ]
            proc = Proc("prometheus", argv, dict(os.environ), log_path).start()
            url = f"http://127.0.0.1:{port}"
            wait_until(
                lambda: httpx.get(f"{url}/-/ready", timeout=1).status_code == 200,
                timeout=ready_timeout,
                what=f"prometheus at {url}",
                abort=proc.died,
                retry_on=(httpx.HTTPError,),
            )
            return proc

        proc, self.port = start_on_free_port("prometheus", launch, free_port)
        self.url = f"http://127.0.0.1:{self.port}"
        return proc

    def scraped(self, jobs: set[str]) -> bool:
        """Has every target of these jobs been scraped successfully at least once?"""
        try:
            body = httpx.get(f"{self.url}/api/v1/targets", params={"state": "active"}, timeout=2).json()
        except (httpx.HTTPError, ValueError):
            return False
        healthy = {t["labels"].get("job") for t in body.get("data", {}).get("activeTargets", []) if t["health"] == "up"}
        return jobs <= healthy


class PromClient:
    """Prometheus' HTTP API, as the dashboards check and the report read it."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, timeout=10)

    def _data(self, resp: httpx.Response) -> Any:
        body = resp.json()
        if body.get("status") != "success":
            raise ValueError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = at
        data = self._data(self.http.get("/api/v1/query", params=params))
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def query_range_raw(self, expr: str, start: float, end: float, step: float = 1.0) -> list[dict[str, Any]]:
        params = {"query": expr, "start": start, "end": end, "step": step}
        return list(self._data(self.http.get("/api/v1/query_range", params=params))["result"])

    def query_range(self, expr: str, start: float, end: float, step: float = 1.0) -> list[dict[str, Any]]:
        """Like ``query``, over a window; each series' samples are folded into ``value`` (the first non-NaN)."""
        out = []
        for series in self.query_range_raw(expr, start, end, step):
            values = [v for v in series["values"] if not math.isnan(float(v[1]))] or series["values"][:1]
            out.append({"metric": series["metric"], "value": values[0]})
        return out

    def scalar(self, expr: str, at: float | None = None) -> float | None:
        """The first series' value, or None when the answer is empty (a missing series is not zero)."""
        result = self.query(expr, at)
        return float(result[0]["value"][1]) if result else None

    def label_values(self, label: str, match: str | None) -> list[str]:
        params = {"match[]": match} if match else None
        return list(self._data(self.http.get(f"/api/v1/label/{label}/values", params=params)))

    def alerts(self) -> list[dict[str, Any]]:
        return list(self._data(self.http.get("/api/v1/alerts"))["alerts"])

    def rules_evaluated(self) -> bool:
        groups = self._data(self.http.get("/api/v1/rules"))["groups"]
        return bool(groups) and all(g.get("lastEvaluation", "").startswith("20") for g in groups)

    def tsdb_span(self) -> tuple[float, float]:
        """(first, last) sample time of the head block, epoch seconds."""
        stats = self._data(self.http.get("/api/v1/status/tsdb"))["headStats"]
        return int(stats["minTime"]) / 1000, int(stats["maxTime"]) / 1000

    def targets(self) -> list[dict[str, Any]]:
        return list(self._data(self.http.get("/api/v1/targets"))["activeTargets"])

    def close(self) -> None:
        self.http.close()
