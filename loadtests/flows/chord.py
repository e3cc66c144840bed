"""Fan out a chord (one process_item per item, then aggregate_results) and check the aggregate.

The workflow's latency runs from the first header task's ``sent`` to the callback's ``finished``: the callback
is only published when the last header task ends, so its own timeline would hide the fan-out."""

from __future__ import annotations

import random
from typing import Any

from celery import states
from locust import task

from loadtests.common.base import ApiUser
from loadtests.common.polling import STATUS_NAME, follow_task, report


class ChordUser(ApiUser):
    @task
    def fan_out(self) -> None:
        items = [random.randint(-1000, 1000) for _ in range(self.scenario.chord_size)]
        body = self.call(
            "POST", "/api/v1/workflows/chord", json={"items": items}, expect=(202,), require=("task_id", "children")
        )
        if body is None:
            return
        self.record("chord", body["task_id"], *body["children"])
        if not self.scenario.follow:
            return
        followed = follow_task(self, body["task_id"])
        first = None
        if followed.status == states.SUCCESS and body["children"]:
            answer = self.call("GET", f"/api/v1/tasks/{body['children'][0]}", name=STATUS_NAME, expect=(200,))
            first = (answer or {}).get("timeline")
        want = {"count": len(items), "total": sum(i * i for i in items)}

        def check(result: Any) -> str | None:
            return None if result == want else f"chord aggregate {result!r}, expected {want}"

        report(self, "chord", followed, check=check, first=first)
