"""An OpenAI-compatible chat-completions client. Locally it talks to the lab's stub (lab/ai_stub.py)."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from app.core.config import Settings, get_settings


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


@dataclass(frozen=True)
class CompletionResponse:
    text: str
    usage: Usage
    model: str


class AIServiceError(Exception):
    """A failed call. ``transient`` tells the task whether retrying can help (5xx, 429, network)."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


class AIService:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()

    def generate_completion(self, prompt: str) -> CompletionResponse:
        url = self.settings.ai_base_url.rstrip("/") + "/v1/chat/completions"
        payload = {"model": self.settings.ai_model, "messages": [{"role": "user", "content": prompt}]}
        headers = {"Authorization": f"Bearer {self.settings.ai_api_key}"}
        try:
            resp = httpx.post(url, json=payload, headers=headers, timeout=self.settings.ai_timeout_s)
        except httpx.HTTPError as exc:
            raise AIServiceError(f"AI endpoint unreachable: {exc!r}", transient=True) from exc
        if resp.status_code >= 500 or resp.status_code == 429:
            raise AIServiceError(f"AI endpoint returned {resp.status_code}", transient=True)
        if resp.status_code >= 400:
            raise AIServiceError(
                f"AI endpoint refused the request: {resp.status_code} {resp.text[:200]}", transient=False
            )
        try:
            body = resp.json()
            usage = body["usage"]
            return CompletionResponse(
                text=body["choices"][0]["message"]["content"],
                usage=Usage(usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]),
                model=body.get("model", self.settings.ai_model),
            )
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise AIServiceError(f"AI endpoint sent a malformed response: {exc!r}", transient=False) from exc
