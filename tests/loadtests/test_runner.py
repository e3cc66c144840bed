"""Starting Locust: a port lost between choosing and binding is chosen again, before a worker is pointed at it."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from lab.procs import free_port, wait_until
from loadtests import runner
from loadtests.common.config import get_scenario
from tests.support import squatted_port


@pytest.mark.stack
def test_a_locust_port_taken_between_choosing_and_binding_is_chosen_again(tmp_path: Path, monkeypatch) -> None:
    with squatted_port() as port:
        picks = iter([port, port])  # the master's metrics port and its worker port both lose the race once
        monkeypatch.setattr(runner, "free_port", lambda host="127.0.0.1": next(picks, None) or free_port(host))
        dist = runner.Distribution(processes=1)
        nowhere = f"http://127.0.0.1:{free_port()}"  # the load itself is beside the point here
        run = runner._start_locust(get_scenario("smoke"), tmp_path, nowhere, dist, {})
    try:
        assert run.master_port != port
        assert str(port) not in run.prometheus_url
        assert "Address already in use" in (tmp_path / "locust-master.log").read_text()  # the lost race happened
        wait_until(
            lambda: httpx.get(run.prometheus_url, timeout=2).status_code == 200,
            timeout=30,
            what="the master's metrics",
        )
        assert all(p.alive() for p in run.procs)
    finally:
        runner._stop(run)
