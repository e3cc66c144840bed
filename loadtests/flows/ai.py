"""Ask for AI completions (the AI stub's latency and error knobs make the worker side realistic)."""

from __future__ import annotations

import random
from typing import Any

from locust import task

from loadtests.common.base import ApiUser
from loadtests.common.polling import follow_task, report

PROMPTS = (
    "Summarise this support ticket in two sentences",
    "Draft a polite reply to a customer asking for a refund",
    "List three risks in this deployment plan",
    "Translate the release notes into plain language",
)


class AiUser(ApiUser):
    user_id: int | None = None

    def on_start(self) -> None:
        user = self.sign_up("ai")
        self.user_id = user["id"] if user else None

    @task
    def completion(self) -> None:
        if self.user_id is None:
            self.on_start()
            return
        body = self.call(
            "POST",
            "/api/v1/ai/completions",
            json={"prompt": random.choice(PROMPTS), "user_id": self.user_id},
            expect=(202,),
            require=("task_id",),
        )
        if body is None:
            return
        self.record("ai_completion", body["task_id"])
        if not self.scenario.follow:
            return

        def check(result: Any) -> str | None:
            ok = isinstance(result, dict) and result.get("status") == "completed" and result.get("tokens", 0) > 0
            return None if ok else f"completion result {result!r} is not a completed completion with tokens"

        report(self, "ai_completion", follow_task(self, body["task_id"]), check=check)
