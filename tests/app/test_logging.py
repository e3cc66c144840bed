"""structlog: JSON lines off a TTY, console on one; task and request context bound on every line."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import subprocess
import sys

import httpx

from lab.procs import wait_until
from lab.profiles import ROOT
from lab.stack import Stack
from tests.support import unique_email, wait_task

SNIPPET = (
    "import logging, structlog; from app.core.logging import configure_logging; configure_logging(); "
    "structlog.get_logger('t').info('hello', k=1); logging.getLogger('celery').warning('stdlib line')"
)

ANSI = re.compile(r"\x1b\[[0-9;]*m")
ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z")
CONSOLE_LINE = re.compile(ISO_UTC.pattern + r" \[(\w+) *\] (.+?) +\[(\w+)\]( k=1)?")


def json_lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out


def test_json_when_not_a_tty() -> None:
    env = {**os.environ, "LOG_FORMAT": "auto"}
    res = subprocess.run([sys.executable, "-c", SNIPPET], capture_output=True, text=True, env=env, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    # Every line, not just the ones that happen to parse: a console line among them would fail here.
    lines = [json.loads(line) for line in res.stderr.splitlines()]
    assert all(isinstance(r, dict) for r in lines), lines
    assert [(r["event"], r["level"], r["logger"]) for r in lines] == [
        ("hello", "info", "t"),
        ("stdlib line", "warning", "celery"),
    ]
    assert lines[0]["k"] == 1  # a typed value, not the console's "k=1" text
    assert all(ISO_UTC.fullmatch(r["timestamp"]) for r in lines), lines


def test_console_when_a_tty() -> None:
    pid, fd = pty.fork()
    if pid == 0:  # child: stderr is the pty
        os.chdir(ROOT)
        os.environ["LOG_FORMAT"] = "auto"
        os.execv(sys.executable, [sys.executable, "-c", SNIPPET])
    chunks = []
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.waitpid(pid, 0)
    text = b"".join(chunks).decode(errors="replace")
    # Colours: a JSON line carries ESC only escaped, as \u001b, never as the raw byte.
    assert "\x1b[" in text, repr(text)
    lines = [ANSI.sub("", line).rstrip() for line in text.splitlines() if line.strip()]
    # structlog's console layout (timestamp, [level], padded event, [logger], key=value), which no JSON line has.
    fields = [m.groups() if (m := CONSOLE_LINE.fullmatch(line)) else line for line in lines]
    assert fields == [("info", "hello", "t", " k=1"), ("warning", "stdlib line", "celery", None)]


def test_task_and_request_context_on_every_line(app_stack: Stack) -> None:
    api = httpx.Client(base_url=app_stack.urls["api"], timeout=30)
    resp = api.post(
        "/api/v1/users", json={"email": unique_email("log"), "name": "L"}, headers={"X-Request-ID": "req-log-1"}
    )
    task_id = resp.json()["welcome_task_id"]
    assert wait_task(api, task_id)["status"] == "SUCCESS"

    def worker_lines() -> list[dict]:
        return [r for r in json_lines(app_stack.procs["w1"].log_path.read_text()) if r.get("task_id") == task_id]

    lines = wait_until(lambda: len(worker_lines()) >= 2 and worker_lines(), timeout=30, what="worker log lines")
    events = {r["event"] for r in lines}
    assert {"Sending welcome email", "Welcome email sent"} <= events
    assert all(r["task_name"] == "app.tasks.email.send_welcome_email" for r in lines)

    api_lines = [
        r for r in json_lines(app_stack.procs["api"].log_path.read_text()) if r.get("request_id") == "req-log-1"
    ]
    assert any(r["event"] == "task dispatched" and r["task_id"] == task_id for r in api_lines)
