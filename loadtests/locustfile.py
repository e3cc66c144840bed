"""What ``locust -f loadtests/locustfile.py`` loads: the user flows, the hooks, and one shape for every scenario.

``lab load`` runs it for you. By hand (see docs/load.md): ``LAB_LOAD_SCENARIO=smoke locust -f
loadtests/locustfile.py --headless -H http://127.0.0.1:8000``.
"""

from __future__ import annotations

from locust import LoadTestShape
from locust.runners import WORKER_REPORT_INTERVAL, MasterRunner

from loadtests.common import plugin
from loadtests.common.shapes import target
from loadtests.flows.ai import AiUser
from loadtests.flows.chord import ChordUser
from loadtests.flows.export import ExportUser
from loadtests.flows.producer import CeleryProducer
from loadtests.flows.signup import SignupUser

__all__ = ["AiUser", "CeleryProducer", "ChordUser", "ExportUser", "ScenarioShape", "SignupUser"]


class ScenarioShape(LoadTestShape):
    """The scenario's shape, then a cool-down: stop every user (each finishes its in-flight request, so no
    dispatched task id is lost) and, with workers, wait for their last report before Locust quits; Locust's
    own quit gives workers only half a second."""

    _stopping_since: float | None = None
    _idle_since: float | None = None

    def tick(self) -> tuple[int, float] | None:
        assert self.runner is not None
        sc = plugin.scenario(self.runner.environment)
        t = self.get_run_time()
        want = target(
            sc.shape, t, users=sc.users, spawn_rate=sc.spawn_rate, duration_s=sc.duration_s, params=sc.shape_params
        )
        if want is not None:
            return want
        if self._stopping_since is None:
            self._stopping_since = t
        stop_all = (0, float(max(sc.users, 100)))
        if self.runner.user_count > 0 and t - self._stopping_since < sc.stop_timeout_s + 2 * WORKER_REPORT_INTERVAL:
            return stop_all
        if isinstance(self.runner, MasterRunner):
            if self._idle_since is None:
                self._idle_since = t
            if t - self._idle_since < WORKER_REPORT_INTERVAL + 0.5:
                return stop_all
        return None
