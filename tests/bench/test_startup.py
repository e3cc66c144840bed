"""``lab bench startup``: one real round of `lab up`'s default stack, and the summary's arithmetic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.startup import MILESTONES, summarize
from lab.cli import app


def test_summarize_takes_medians_and_ranges_of_what_each_round_reached() -> None:
    rounds = [{"urls_s": 9.0, "first_rate_s": 10.0}, {"urls_s": 11.0}, {"urls_s": 10.0, "first_rate_s": 12.0}]
    assert summarize(rounds) == {
        "urls_s": {"median": 10.0, "min": 9.0, "max": 11.0},
        "first_rate_s": {"median": 11.0, "min": 10.0, "max": 12.0},
    }


@pytest.mark.stack
@pytest.mark.usefixtures("no_leftovers")
def test_one_round_reaches_every_milestone_in_order(tmp_path: Path) -> None:
    out = tmp_path / "startup.json"
    result = CliRunner().invoke(app, ["bench", "startup", "--repeat", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    (rnd,) = doc["rounds"]
    assert set(rnd) == set(MILESTONES), rnd
    # Ready means scraped: the URLs come after Prometheus' first scrape of every member, and a rate after that.
    order = [rnd[k] for k in ("members_s", "workers_s", "first_scrape_s", "urls_s", "first_rate_s", "first_success_s")]
    assert order == sorted(order) and order[0] > 0, rnd
    assert len(doc["load_average"]["before"]) == 3 and "time to first data" in result.output
