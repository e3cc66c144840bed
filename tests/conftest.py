"""Shared fixtures: real Stacks (redis-server, celery workers, uvicorn) started per test or per session.

No fakes here: a test that claims broker, worker or metrics behaviour gets real processes. Every Stack is
stopped by its fixture, on failure too; ``no_leftovers`` checks that the PIDs it started are gone.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from lab.procs import Proc
from lab.stack import Stack, StackConfig

# Fixtures that start real processes (or hand out ones that run): a test using any of them is a `stack` test.
STACK_FIXTURES = {
    "stack_factory",
    "app_stack",
    "api",
    "redis_url",
    "bench",
    "shared_stack",
    "net_stack",
    "rabbit_stack",
    "proxied",
    "load_stack",
    "door_stack",
    "celery_local_stack",
    "celery_setup",
    "celery_worker",
    "celery_broker",
    "celery_backend",
    "no_leftovers",  # only a test that starts processes has leftovers to check
}

# Short retry delays so retry paths finish in seconds; everything else is the reference profile.
FAST_RETRIES = {
    "CELERY_TASK_DEFAULT_RETRY_DELAY": "0.2",
    "AI_RETRY_COUNTDOWN": "0.2",
    "EXPORT_STEP_DELAY_S": "0.4",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if STACK_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.stack)


@pytest.fixture(autouse=True)
def _stack_marker_is_honest(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """`pytest -m "not stack"` is the fast subset: a test outside it that starts a lab process fails, saying so."""
    if request.node.get_closest_marker("stack"):
        return

    def refuse(self: Proc) -> Proc:
        raise AssertionError(f"{request.node.nodeid} starts {self.name} ({self.argv[0]}): mark it @pytest.mark.stack")

    monkeypatch.setattr(Proc, "start", refuse)


@pytest.fixture(scope="session", autouse=True)
def _results_elsewhere(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every command a test runs (in process or as a subprocess) writes its run dirs here, never into the
    checkout's results/."""
    old = os.environ.get("LAB_RESULTS_DIR")
    os.environ["LAB_RESULTS_DIR"] = str(tmp_path_factory.mktemp("results"))
    yield
    if old is None:
        os.environ.pop("LAB_RESULTS_DIR", None)
    else:
        os.environ["LAB_RESULTS_DIR"] = old


def _descendants() -> set[int]:
    with contextlib.suppress(psutil.NoSuchProcess):
        return {p.pid for p in psutil.Process(os.getpid()).children(recursive=True)}
    return set()


@pytest.fixture
def stack_factory(tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    """Start Stacks with any StackConfig fields; all are stopped at the end of the test."""
    started: list[Stack] = []

    def make(**kw: object) -> Stack:
        kw.setdefault("run_dir", tmp_path / f"stack{len(started)}")
        stack = Stack(StackConfig(**kw))  # type: ignore[arg-type]
        started.append(stack)
        return stack.start()

    yield make
    for stack in reversed(started):
        stack.stop()


@pytest.fixture(scope="session")
def app_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One reference Stack (1 worker, beat) shared by the tests that only use the system, never break it."""
    cfg = StackConfig(run_dir=tmp_path_factory.mktemp("app-stack"), workers=1, beat=True, overrides=dict(FAST_RETRIES))
    with Stack(cfg) as stack:
        yield stack


@pytest.fixture
def no_leftovers() -> Iterator[None]:
    """Fail the test if it leaves a child process of the test runner behind."""
    before = _descendants()
    yield
    left = []
    for pid in _descendants() - before:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{pid} {' '.join(proc.cmdline())[:120]}")
    assert not left, f"processes left behind: {left}"
