"""Helpers for tests that talk to a running Stack's API."""

from __future__ import annotations

import contextlib
import itertools
import json
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import httpx
import psutil
import xmlschema

from lab.procs import wait_until
from lab.stack import Stack

FINAL = {"SUCCESS", "FAILURE", "REVOKED"}
_seq = itertools.count()


def unique_email(tag: str = "u") -> str:
    return f"{tag}{next(_seq)}.{id(_seq)}@example.com"


def wait_task(client: httpx.Client, task_id: str, timeout: float = 60, seen: list[str] | None = None) -> dict[str, Any]:
    """Poll the status endpoint until the task is final; ``seen`` collects every status observed."""

    def final() -> dict[str, Any] | None:
        resp = client.get(f"/api/v1/tasks/{task_id}")
        if resp.status_code == 503:  # the read missed its deadline (Retry-After): ask again, as a client would
            return None
        body = resp.json()
        if seen is not None and (not seen or seen[-1] != body["status"]):
            seen.append(body["status"])
        return body if body["status"] in FINAL else None

    return wait_until(final, timeout=timeout, what=f"task {task_id} to finish", interval=0.05)


def create_user(client: httpx.Client, name: str = "Test") -> dict[str, Any]:
    resp = client.post("/api/v1/users", json={"email": unique_email(), "name": name})
    assert resp.status_code == 201, resp.text
    return resp.json()


def welcome_results(stack: Stack, email: str) -> list[dict[str, Any]]:
    """The stored results of every welcome email task for ``email`` (the late one's id was never answered)."""
    backend = stack.redis(1)
    try:
        metas = [json.loads(backend.get(key) or b"{}") for key in backend.scan_iter("celery-task-meta-*")]
    finally:
        backend.close()
    return [m["result"] for m in metas if isinstance(m.get("result"), dict) and m["result"].get("email") == email]


def wait_both_welcomes(stack: Stack, email: str) -> list[dict[str, Any]]:
    """Wait until both welcome tasks for ``email`` have run (the 503'd sign-up's late one reaches the broker
    once it resumes), so a count of emails after it cannot pass just because the late one had not run yet."""

    def both_ran() -> list[dict[str, Any]] | None:
        results = welcome_results(stack, email)
        return results if len(results) == 2 else None

    return wait_until(both_ran, timeout=60, what="the late welcome task of the 503'd sign-up to run")


def is_stopped(pid: int) -> bool:
    return psutil.Process(pid).status() == psutil.STATUS_STOPPED


@contextlib.contextmanager
def stalled(stack: Stack, member: str = "redis") -> Iterator[None]:
    """``member`` SIGSTOPped, and seen stopped by the kernel, for the block; SIGCONTed whatever happens."""
    pid = stack.procs[member].pid
    stack.signal_member(member, signal.SIGSTOP)
    try:
        wait_until(lambda: is_stopped(pid), timeout=5, what=f"{member} stopped", interval=0.01)
        yield
    finally:
        stack.signal_member(member, signal.SIGCONT)


@contextlib.contextmanager
def squatted_port() -> Iterator[int]:
    """A loopback port another socket listens on for the block: what a lost race for a free port looks like."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


JUNIT_XSD = Path(__file__).resolve().parent / "vendor" / "junit" / "junit-10.xsd"


def junit_report(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Validate a JUnit XML file against the Jenkins/Surefire schema (xmlschema) and return, per testsuite
    name, its testcases as {name, failure, error, skipped} plus the suite's properties under "properties"."""
    xmlschema.XMLSchema(str(JUNIT_XSD)).validate(str(path))
    root = ElementTree.parse(path).getroot()
    suites: dict[str, list[dict[str, Any]]] = {}
    for suite in root.iter("testsuite"):
        props = {p.get("name"): p.get("value") for p in suite.iter("property")}
        cases = [
            {
                "name": c.get("name"),
                **{
                    kind: (el.get("message") if (el := c.find(kind)) is not None else None)
                    for kind in ("failure", "error", "skipped")
                },
                "properties": props,
            }
            for c in suite.iter("testcase")
        ]
        suites[str(suite.get("name"))] = cases
    return suites
