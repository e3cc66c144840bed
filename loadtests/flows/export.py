"""Request a data export and poll its progress until SUCCESS; progress must never go backwards."""

from __future__ import annotations

import random
from typing import Any

from locust import task

from loadtests.common.base import ApiUser
from loadtests.common.polling import follow_task, report


class ExportUser(ApiUser):
    user_id: int | None = None

    def on_start(self) -> None:
        user = self.sign_up("export")
        self.user_id = user["id"] if user else None

    @task
    def export_and_watch_progress(self) -> None:
        if self.user_id is None:
            self.on_start()  # the sign-up failed (and was counted); try again rather than export nobody
            return
        fmt = random.choice(("json", "csv"))
        body = self.call(
            "POST",
            f"/api/v1/users/{self.user_id}/export?format={fmt}",
            name="/api/v1/users/[id]/export",
            expect=(202,),
            require=("task_id",),
        )
        if body is None:
            return
        self.record("export", body["task_id"])
        if not self.scenario.follow:
            return
        highest = -1

        def watch(answer: dict[str, Any]) -> str | None:
            nonlocal highest
            if answer["status"] != "PROGRESS":
                return None
            percent = (answer.get("progress") or {}).get("percent")
            if not isinstance(percent, int) or not 0 <= percent <= 100:
                return f"malformed progress {answer.get('progress')!r}"
            if percent < highest:
                return f"progress went backwards: {highest}% -> {percent}%"
            highest = percent
            return None

        def check(result: Any) -> str | None:
            ok = isinstance(result, dict) and result.get("status") == "completed" and result.get("format") == fmt
            return None if ok else f"export result {result!r} is not a completed {fmt} export"

        report(self, "export", follow_task(self, body["task_id"], watch=watch), check=check)
