"""A real SMTP server (aiosmtpd) that keeps what it receives, with an HTTP control port.

``python -m lab.smtp_sink --smtp-port 1025 --http-port 1080 --data-dir DIR``

Control (HTTP, JSON): ``GET /health``, ``GET /messages[?to=ADDR]``, ``GET /stats``,
``POST /refuse {"count": N}`` (answer the next N deliveries with 451, a temporary failure that smtplib raises
as SMTPDataError, so tasks take their real retry path; ``"code": 550`` answers a permanent failure instead,
``"to": ADDR`` refuses only deliveries to ADDR), ``DELETE /messages``.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from email import message_from_bytes
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from fastapi import FastAPI
from pydantic import BaseModel, Field


class SinkState:
    def __init__(self, data_dir: Path) -> None:
        self.lock = threading.Lock()
        self.messages: list[dict[str, Any]] = []
        self.refuse_remaining = 0
        self.refuse_code = 451
        self.refuse_to: str | None = None
        self.refused = 0
        self.log = data_dir / "messages.jsonl"
        data_dir.mkdir(parents=True, exist_ok=True)


class Handler:
    def __init__(self, state: SinkState) -> None:
        self.state = state

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self.state.lock:
            state = self.state
            if state.refuse_remaining > 0 and (state.refuse_to is None or state.refuse_to in envelope.rcpt_tos):
                state.refuse_remaining -= 1
                state.refused += 1
                code = state.refuse_code
                kind = "Temporary" if code < 500 else "Permanent"
                return f"{code} {code // 100}.3.0 {kind} failure: the lab sink was told to refuse this delivery"
            raw = envelope.content if isinstance(envelope.content, bytes) else str(envelope.content).encode()
            msg = message_from_bytes(raw, policy=default_policy)
            record = {
                "received_at": time.time(),
                "mail_from": envelope.mail_from,
                "rcpt_tos": list(envelope.rcpt_tos),
                "subject": str(msg.get("Subject", "")),
                "size": len(raw),
            }
            self.state.messages.append(record)
            with self.state.log.open("a") as fh:
                fh.write(json.dumps(record) + "\n")
        return "250 Message accepted for delivery"


class Refuse(BaseModel):
    count: int = Field(ge=0, le=1_000_000)
    # 4xx: smtplib raises SMTPDataError and a retry may succeed; 5xx: the same exception, a final answer.
    code: int = Field(451, ge=400, le=599)
    to: str | None = None


def control_app(state: SinkState) -> FastAPI:
    api = FastAPI(title="lab SMTP sink")

    @api.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/messages")
    def messages(to: str | None = None) -> list[dict[str, Any]]:
        with state.lock:
            return [m for m in state.messages if to is None or to in m["rcpt_tos"]]

    @api.get("/stats")
    def stats() -> dict[str, int]:
        with state.lock:
            return {
                "delivered": len(state.messages),
                "refused": state.refused,
                "refuse_remaining": state.refuse_remaining,
            }

    @api.post("/refuse")
    def refuse(body: Refuse) -> dict[str, int]:
        with state.lock:
            state.refuse_remaining, state.refuse_code, state.refuse_to = body.count, body.code, body.to
            return {"refuse_remaining": state.refuse_remaining}

    @api.delete("/messages")
    def clear() -> dict[str, int]:
        with state.lock:
            n = len(state.messages)
            state.messages.clear()
            return {"cleared": n}

    return api


class SinkClient:
    """The sink's HTTP control API, as the lab drives it (beside the server it controls)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def messages(self, to: str | None = None) -> list[dict[str, Any]]:
        params = {"to": to} if to else None
        resp = httpx.get(f"{self.url}/messages", params=params, timeout=5)
        resp.raise_for_status()
        return list(resp.json())

    def stats(self) -> dict[str, int]:
        resp = httpx.get(f"{self.url}/stats", timeout=5)
        resp.raise_for_status()
        return dict(resp.json())

    def refuse(self, count: int) -> None:
        httpx.post(f"{self.url}/refuse", json={"count": count}, timeout=5).raise_for_status()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--smtp-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    state = SinkState(args.data_dir)
    controller = Controller(Handler(state), hostname=args.host, port=args.smtp_port)
    controller.start()
    try:
        uvicorn.run(control_app(state), host=args.host, port=args.http_port, log_level="warning")
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
