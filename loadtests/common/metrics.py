"""Locust's numbers as Prometheus metrics, served from the master (or the only process) of a run.

Names (the "Load test" Grafana dashboard reads exactly these):

- ``locust_users``: users running now (gauge)
- ``locust_requests_total{method,name}`` / ``locust_failures_total{method,name}``: every request event except
  QUEUE (queue wait is a second view of a task already counted as TASK)
- ``locust_response_time_seconds{method,name,type}``: histogram; ``type`` is ``task_e2e`` for TASK events
  (sent -> finished from the task's own timestamps) and ``http`` for the client's own calls (HTTP, and ENQUEUE
  for users that publish straight to the broker)
- ``locust_task_queue_wait_seconds{name}``: histogram of sent -> started

Request events fire where users run. With workers, each worker keeps a ``MetricStore`` of what happened since
its last report and ships ``snapshot()`` with Locust's own worker report; the master ``merge()``s it. So the
store is plain data and mergeable, and the collector reads it at scrape time.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    math.inf,
)
TASK, QUEUE = "TASK", "QUEUE"


def latency_type(method: str) -> str:
    return "task_e2e" if method == TASK else "http"


class _Hist:
    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * len(BUCKETS)  # per bucket, not cumulative
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds

    def cumulative(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for le, n in zip(BUCKETS, self.counts, strict=True):
            running += n
            out.append(("+Inf" if math.isinf(le) else repr(le), running))
        return out


class MetricStore:
    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.requests: dict[tuple[str, str], int] = {}
        self.failures: dict[tuple[str, str], int] = {}
        self.latency: dict[tuple[str, str, str], _Hist] = {}
        self.queue_wait: dict[str, _Hist] = {}

    def observe(self, method: str, name: str, response_time_ms: float | None, failed: bool) -> None:
        seconds = None if response_time_ms is None else max(response_time_ms, 0.0) / 1000
        if method == QUEUE:
            if seconds is not None and not failed:
                self.queue_wait.setdefault(name, _Hist()).observe(seconds)
            return
        key = (method, name)
        self.requests[key] = self.requests.get(key, 0) + 1
        if failed:
            self.failures[key] = self.failures.get(key, 0) + 1
        if seconds is not None:
            self.latency.setdefault((method, name, latency_type(method)), _Hist()).observe(seconds)

    def snapshot(self, reset: bool = True) -> dict[str, Any]:
        """JSON-safe content (lists, not tuples as keys), for a worker's report to the master."""
        snap = {
            "requests": [[*k, v] for k, v in self.requests.items()],
            "failures": [[*k, v] for k, v in self.failures.items()],
            "latency": [[*k, h.counts, h.total] for k, h in self.latency.items()],
            "queue_wait": [[k, h.counts, h.total] for k, h in self.queue_wait.items()],
        }
        if reset:
            self.clear()
        return snap

    def merge(self, snap: dict[str, Any]) -> None:
        for method, name, n in snap.get("requests", []):
            self.requests[(method, name)] = self.requests.get((method, name), 0) + n
        for method, name, n in snap.get("failures", []):
            self.failures[(method, name)] = self.failures.get((method, name), 0) + n
        for method, name, kind, counts, total in snap.get("latency", []):
            self._add(self.latency.setdefault((method, name, kind), _Hist()), counts, total)
        for name, counts, total in snap.get("queue_wait", []):
            self._add(self.queue_wait.setdefault(name, _Hist()), counts, total)

    @staticmethod
    def _add(hist: _Hist, counts: list[int], total: float) -> None:
        if len(counts) != len(BUCKETS):
            return  # a worker running another version of this file: drop rather than mislabel
        hist.counts = [a + b for a, b in zip(hist.counts, counts, strict=True)]
        hist.total += total


class StoreCollector(Collector):
    def __init__(self, store: MetricStore, users: Callable[[], int]) -> None:
        self.store = store
        self.users = users

    def collect(self) -> Iterator[Metric]:
        s = self.store
        yield GaugeMetricFamily("locust_users", "Locust users running now", value=self.users())
        req = CounterMetricFamily("locust_requests", "Requests (and TASK completions) seen", labels=["method", "name"])
        for (method, name), n in sorted(s.requests.items()):
            req.add_metric([method, name], n)
        yield req
        fail = CounterMetricFamily("locust_failures", "Failed requests and tasks", labels=["method", "name"])
        for (method, name), n in sorted(s.failures.items()):
            fail.add_metric([method, name], n)
        yield fail
        lat = HistogramMetricFamily(
            "locust_response_time_seconds",
            "Response time: the client's call (type=http) or sent -> finished of a task (type=task_e2e)",
            labels=["method", "name", "type"],
        )
        for (method, name, kind), h in sorted(s.latency.items()):
            lat.add_metric([method, name, kind], h.cumulative(), sum_value=h.total)
        yield lat
        wait = HistogramMetricFamily(
            "locust_task_queue_wait_seconds", "Task sent -> started, from its own timestamps", labels=["name"]
        )
        for name, h in sorted(s.queue_wait.items()):
            wait.add_metric([name], h.cumulative(), sum_value=h.total)
        yield wait
