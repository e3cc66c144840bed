"""A local OpenAI-compatible ``/v1/chat/completions`` server with latency and error knobs.

``python -m lab.ai_stub --port 8081 [--latency lognormal:0.05,0.5] [--error-rate 0.05] [--seed 1]``

Latency specs: ``fixed:S``, ``uniform:LO,HI``, ``lognormal:MEDIAN,SIGMA`` (seconds). Errors are HTTP 500s,
drawn with probability ``--error-rate``, plus ``fail_next`` forced failures. Knobs can be changed while it
runs: ``POST /_control {"latency": "...", "error_rate": 0.1, "fail_next": 3}``; ``GET /_stats`` counts.
``usage.total_tokens`` is computed from the prompt and the reply (whitespace tokens), so it is real data.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field


@dataclass(frozen=True)
class Latency:
    kind: str
    a: float = 0.0
    b: float = 0.0

    def sample(self, rng: random.Random) -> float:
        if self.kind == "fixed":
            return self.a
        if self.kind == "uniform":
            return rng.uniform(self.a, self.b)
        return self.a * math.exp(rng.gauss(0.0, self.b))  # lognormal with median a, shape b


def parse_latency(spec: str) -> Latency:
    """Parse ``fixed:S`` / ``uniform:LO,HI`` / ``lognormal:MEDIAN,SIGMA``; ValueError says what is accepted."""
    kind, _, rest = spec.partition(":")
    try:
        nums = [float(x) for x in rest.split(",")] if rest else []
    except ValueError:
        nums = []
    want = {"fixed": 1, "uniform": 2, "lognormal": 2}
    if kind not in want or len(nums) != want[kind] or any(n < 0 or not math.isfinite(n) for n in nums):
        raise ValueError(
            f"bad latency {spec!r}: expected fixed:S, uniform:LO,HI or lognormal:MEDIAN,SIGMA with seconds >= 0"
        )
    if kind == "uniform" and nums[0] > nums[1]:
        raise ValueError(f"bad latency {spec!r}: LO must not exceed HI")
    return Latency(kind, *nums)


class Message(BaseModel):
    role: str
    content: str


class ChatRequest(BaseModel):
    model: str
    messages: list[Message] = Field(min_length=1)


class Control(BaseModel):
    latency: str | None = None
    error_rate: float | None = Field(None, ge=0, le=1)
    fail_next: int | None = Field(None, ge=0)


class StubState:
    def __init__(self, latency: Latency, error_rate: float, seed: int | None) -> None:
        self.latency = latency
        self.error_rate = error_rate
        self.fail_next = 0
        self.rng = random.Random(seed)
        self.requests = 0
        self.errors = 0


def reply_for(prompt: str) -> str:
    words = prompt.split()
    return "Stub reply to: " + " ".join(words[:16])


def create_stub(state: StubState) -> FastAPI:
    api = FastAPI(title="lab AI stub")

    @api.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/_stats")
    def stats() -> dict[str, Any]:
        return {
            "requests": state.requests,
            "errors": state.errors,
            "error_rate": state.error_rate,
            "latency": state.latency.__dict__,
            "fail_next": state.fail_next,
        }

    @api.post("/_control")
    def control(body: Control) -> dict[str, Any]:
        if body.latency is not None:
            try:
                state.latency = parse_latency(body.latency)
            except ValueError as exc:
                return JSONResponse({"detail": str(exc)}, status_code=422)  # type: ignore[return-value]
        if body.error_rate is not None:
            state.error_rate = body.error_rate
        if body.fail_next is not None:
            state.fail_next = body.fail_next
        return stats()

    @api.post("/v1/chat/completions")
    async def completions(body: ChatRequest) -> JSONResponse:
        state.requests += 1
        await asyncio.sleep(state.latency.sample(state.rng))
        if state.fail_next > 0 or state.rng.random() < state.error_rate:
            state.fail_next = max(0, state.fail_next - 1)
            state.errors += 1
            return JSONResponse(
                {"error": {"message": "stub injected failure", "type": "server_error"}}, status_code=500
            )
        prompt = " ".join(m.content for m in body.messages)
        text = reply_for(prompt)
        p, c = len(prompt.split()), len(text.split())
        return JSONResponse(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c},
            }
        )

    return api


class AiStubClient:
    """The stub's control API, as the lab drives it (beside the server it controls)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def control(self, **knobs: Any) -> dict[str, Any]:
        resp = httpx.post(f"{self.url}/_control", json=knobs, timeout=5)
        resp.raise_for_status()
        return dict(resp.json())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency", default="fixed:0.01", type=parse_latency)
    parser.add_argument("--error-rate", default=0.0, type=float)
    parser.add_argument("--seed", default=None, type=int)
    args = parser.parse_args(argv)
    if not 0 <= args.error_rate <= 1:
        parser.error("--error-rate must be between 0 and 1")
    state = StubState(args.latency, args.error_rate, args.seed)
    uvicorn.run(create_stub(state), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
