"""Sign up, then follow the welcome email task the API dispatched until it is sent."""

from __future__ import annotations

from typing import Any

from locust import task

from loadtests.common.base import ApiUser
from loadtests.common.polling import follow_task, report


class SignupUser(ApiUser):
    @task
    def sign_up_and_get_welcomed(self) -> None:
        user = self.sign_up("signup")
        if user is None or not self.scenario.follow:
            return

        def check(result: Any) -> str | None:
            ok = isinstance(result, dict) and result.get("user_id") == user["id"]
            return None if ok else f"welcome email result {result!r} is not for user {user['id']}"

        report(self, "welcome_email", follow_task(self, user["welcome_task_id"]), check=check)
