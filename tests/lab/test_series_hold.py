"""A new series is held at 0 for the hold, then shows what happened meanwhile (pure: a fake clock)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

from lab.series_hold import ReleaseOnScrape, SeriesHold


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def setup(hold_s: float) -> tuple[SeriesHold, Clock, CollectorRegistry, Counter, Histogram]:
    clock = Clock()
    hold = SeriesHold(hold_s, clock)
    reg = CollectorRegistry()
    reg.register(ReleaseOnScrape(hold.release))  # first, as the exporter registers it
    counter = Counter("c", "c", ("k",), registry=reg)
    hist = Histogram("h", "h", ("k",), buckets=(1.0,), registry=reg)
    return hold, clock, reg, counter, hist


def test_a_series_born_on_its_own_event_reads_0_until_the_hold_ends() -> None:
    hold, clock, reg, counter, hist = setup(2.5)
    hold.inc(counter, "a")
    hold.observe(hist, 0.5, "a")
    assert reg.get_sample_value("c_total", {"k": "a"}) == 0  # the scrape Prometheus needs: the series at 0
    assert reg.get_sample_value("h_count", {"k": "a"}) == 0
    clock.now += 1.0
    hold.inc(counter, "a", amount=2)
    assert reg.get_sample_value("c_total", {"k": "a"}) == 0 and hold.held() == 3
    clock.now += 1.5
    # Any scrape after the hold releases first (ReleaseOnScrape runs before the metrics are read).
    assert reg.get_sample_value("c_total", {"k": "a"}) == 3
    assert reg.get_sample_value("h_count", {"k": "a"}) == 1 and hold.held() == 0
    hold.inc(counter, "a")  # a mature series counts at once
    assert reg.get_sample_value("c_total", {"k": "a"}) == 4


def test_a_touched_series_counts_its_first_event_once_its_hold_is_over() -> None:
    hold, clock, reg, counter, _ = setup(2.0)
    hold.touch(counter, "b")  # created at 0 ahead of its event (the exporter's _init_series)
    clock.now += 2.0
    hold.inc(counter, "b")
    assert reg.get_sample_value("c_total", {"k": "b"}) == 1
    hold.inc(counter, "new")
    assert reg.get_sample_value("c_total", {"k": "new"}) == 0  # a new label value is held on its own


def test_no_hold_counts_at_once_and_a_negative_hold_is_refused() -> None:
    hold, _, reg, counter, _ = setup(0.0)
    hold.inc(counter, "a")
    assert reg.get_sample_value("c_total", {"k": "a"}) == 1
    with pytest.raises(ValueError, match="hold_s"):
        SeriesHold(-1)
