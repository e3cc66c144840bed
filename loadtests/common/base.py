"""The abstract HTTP user every API flow derives from: its wait time comes from the scenario, and every
response is checked in one place (``call``)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from typing import Any

from locust import FastHttpUser, between, constant, constant_throughput
from locust.user.task import LOCUST_STATE_STOPPING

from loadtests.common import plugin
from loadtests.common.config import Scenario, parse_wait

_waits: dict[str, Callable[[Any], float]] = {}


def wait_function(spec: str) -> Callable[[Any], float]:
    if spec not in _waits:
        kind, nums = parse_wait(spec)
        if kind == "none":
            _waits[spec] = constant(0)
        elif kind == "constant":
            _waits[spec] = constant(nums[0])
        elif kind == "between":
            _waits[spec] = between(*nums)
        else:
            _waits[spec] = constant_throughput(nums[0])
    return _waits[spec]


def stopping(user: Any) -> bool:
    """Locust asked this user to stop after its current task (ramp-down or end of the run)."""
    return user._state == LOCUST_STATE_STOPPING


class WithScenario:
    """Mixin for every user: the scenario, the scenario's wait time, the task ledger."""

    environment: Any

    @property
    def scenario(self) -> Scenario:
        return plugin.scenario(self.environment)

    def wait_time(self) -> float:
        return wait_function(self.scenario.wait)(self)

    def record(self, flow: str, *task_ids: str) -> None:
        plugin.LEDGER.record(flow, *task_ids)


class ApiUser(WithScenario, FastHttpUser):
    abstract = True

    def call(
        self,
        method: str,
        path: str,
        *,
        expect: Iterable[int],
        name: str | None = None,
        require: Iterable[str] = (),
        **kwargs: Any,
    ) -> dict[str, Any] | None:
        """One request; a failure unless the status is expected and the body is JSON with ``require`` keys.

        Returns the parsed body, or None after recording the failure."""
        expected = set(expect)
        with self.client.request(method, path, name=name, catch_response=True, **kwargs) as resp:
            if resp.status_code not in expected:
                text = (resp.text or "")[:200] if resp.status_code else str(resp.error)
                resp.failure(f"{method} {name or path}: expected {sorted(expected)}, got {resp.status_code}: {text}")
                return None
            try:
                body = resp.json()
            except ValueError:
                resp.failure(f"{method} {name or path}: answer is not JSON")
                return None
            missing = [k for k in require if k not in body]
            if missing:
                resp.failure(f"{method} {name or path}: answer lacks {missing}")
                return None
            resp.success()
            return body

    def sign_up(self, tag: str) -> dict[str, Any] | None:
        """Create a user (which dispatches its welcome email); the email task is recorded, not followed."""
        body = self.call(
            "POST",
            "/api/v1/users",
            json={"email": f"{tag}.{uuid.uuid4().hex}@load.example.com", "name": f"Load {tag}"},
            expect=(201,),
            require=("id", "welcome_task_id"),
        )
        if body:
            self.record("welcome_email", body["welcome_task_id"])
        return body
