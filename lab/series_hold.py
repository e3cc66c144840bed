"""Hold a new series at 0 until Prometheus has scraped it once, so that its first event is an increase.

A counter series that appears with its first event already counted (born at 1) has no earlier sample:
``rate()`` and ``increase()`` start from that first sample and never see the event that created it. Measured
on the lab before this existed: 5 real failures, ``sum(increase(celery_task_failed_total[15m]))`` = 3. The
exporter creates what it can at 0 ahead of time (every state of a task on its first event), but a series
can still be born on the event it counts: a new exception type, or a task whose received and succeeded
events land in the same scrape interval.

So every update of a counter or histogram goes through here: a series shows 0 for ``hold_s`` seconds after
it first appears, and what happened meanwhile is applied in one step after that. With ``hold_s`` longer than
the scrape interval, Prometheus stores a 0 before every series' first count. Prometheus' own answer (a
synthetic zero at the ``_created`` timestamp, ``--enable-feature=created-timestamp-zero-ingestion``) needs
Prometheus 2.50+ scraping protobuf, which neither Debian's Prometheus nor prometheus-client's exposition
has.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector


class SeriesHold:
    """Counter and histogram updates, each new series held at 0 for ``hold_s`` seconds (0: no hold).

    Not thread-safe by itself: the exporter calls it under its event lock."""

    def __init__(self, hold_s: float = 0.0, clock: Callable[[], float] = time.monotonic) -> None:
        if hold_s < 0:
            raise ValueError(f"hold_s must be >= 0, not {hold_s}")
        self.hold_s = hold_s
        self.clock = clock
        self._born: dict[tuple[str, tuple[str, ...]], float] = {}
        self._pending: dict[tuple[str, tuple[str, ...]], list[Callable[[], None]]] = {}

    def _child(self, metric: MetricWrapperBase, labels: tuple[str, ...]) -> tuple[Any, bool]:
        """The series (created at 0 if new) and whether its updates must still wait."""
        key = (metric._name, labels)
        child = metric.labels(*labels)
        now = self.clock()
        born = self._born.setdefault(key, now)
        return child, key in self._pending or now - born < self.hold_s

    def touch(self, metric: MetricWrapperBase, *labels: str) -> None:
        """Create the series at 0 (its hold starts now, if it is new)."""
        self._child(metric, labels)

    def inc(self, metric: MetricWrapperBase, *labels: str, amount: float = 1.0) -> None:
        child, wait = self._child(metric, labels)
        self._apply((metric._name, labels), wait, lambda: child.inc(amount))

    def observe(self, metric: MetricWrapperBase, value: float, *labels: str) -> None:
        child, wait = self._child(metric, labels)
        self._apply((metric._name, labels), wait, lambda: child.observe(value))

    def _apply(self, key: tuple[str, tuple[str, ...]], wait: bool, update: Callable[[], None]) -> None:
        if wait:
            self._pending.setdefault(key, []).append(update)
        else:
            update()

    def held(self) -> int:
        """Updates waiting for their series' hold to end."""
        return sum(len(v) for v in self._pending.values())

    def release(self) -> None:
        """Apply the updates of every series whose hold has ended, in the order they happened."""
        now = self.clock()
        for key in [k for k in self._pending if now - self._born[k] >= self.hold_s]:
            for update in self._pending.pop(key):
                update()


class ReleaseOnScrape(Collector):
    """Registered first in the exporter's registry: every scrape releases the holds that have ended before
    the other collectors are read, so a matured count is never one housekeeping tick late."""

    def __init__(self, release: Callable[[], None]) -> None:
        self.release = release

    def describe(self) -> list[Any]:
        return []  # no metrics of its own (and registering must not release anything)

    def collect(self) -> Iterator[Any]:
        self.release()
        return iter(())
