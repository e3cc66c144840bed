"""The chaos loss ledger as Prometheus gauges, for the Chaos dashboard's lost/duplicated panels.

The exporter serves these when it runs with ``--ledger-url`` (default: the ``LAB_LEDGER_URL`` environment
variable a chaos experiment sets for its Stack). Per run: tasks sent, tasks with at least one finished
execution, tasks not finished (yet: lost, once the run has drained), and tasks finished more than once.
The key layout stays in ``lab.ledger.Ledger``; this only reads through it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import redis
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from lab.ledger import Ledger


class LedgerCollector(Collector):
    def __init__(self, url: str) -> None:
        self.url = url

    def runs(self) -> list[str]:
        probe = Ledger(self.url, "*")
        try:
            pattern = probe.key("sent")
            prefix, suffix = pattern.split("*", 1)
            keys = probe.client.scan_iter(match=pattern, count=500)
            return sorted(k.decode()[len(prefix) : len(k) - len(suffix)] for k in keys)
        finally:
            probe.close()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = {
            name: GaugeMetricFamily(f"celery_lab_ledger_{name}", text, labels=["run"])
            for name, text in (
                ("sent", "Probe tasks a chaos run sent (from its loss ledger)."),
                ("finished", "Sent tasks with at least one finished execution."),
                ("unfinished", "Sent tasks without a finished execution: lost, once the run has drained."),
                ("duplicated", "Tasks finished more than once (duplicate executions)."),
            )
        }
        try:
            for run in self.runs():
                ledger = Ledger(self.url, run)
                try:
                    data = ledger.read()
                finally:
                    ledger.close()
                finishes = Counter(e.id for e in data.finishes)
                finished = sum(1 for task_id in data.sent if finishes[task_id])
                families["sent"].add_metric([run], len(data.sent))
                families["finished"].add_metric([run], finished)
                families["unfinished"].add_metric([run], len(data.sent) - finished)
                families["duplicated"].add_metric([run], sum(1 for n in finishes.values() if n > 1))
        except redis.RedisError:
            return  # the ledger is gone (its experiment ended): no series rather than a failed scrape
        yield from families.values()
