"""Process handling: deadline waits that let bugs through, PDEATHSIG without preexec_fn, ports lost to a race."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest
import redis

from lab import procs
from lab.errors import StackError
from lab.procs import Proc, recorded_alive, start_redis_server, wait_until, with_pdeathsig
from tests.support import squatted_port


def test_wait_until_lets_a_programming_error_through_at_once() -> None:
    calls = []

    def broken() -> bool:
        calls.append(1)
        raise KeyError("a bug, not a server still starting")

    # Before: every exception was swallowed until the deadline, so a bug became a long timeout.
    with pytest.raises(KeyError):
        wait_until(broken, timeout=60, what="a bug")
    assert len(calls) == 1


def test_wait_until_retries_not_yet_errors_and_names_the_last_one() -> None:
    def refused() -> bool:
        raise redis.ConnectionError("connection refused")

    with pytest.raises(StackError, match=r"timed out after 0.2s waiting for a server .*ConnectionError"):
        wait_until(refused, timeout=0.2, what="a server", interval=0.05)


def test_pdeathsig_comes_from_setpriv_not_a_preexec_fn() -> None:
    argv = with_pdeathsig(["redis-server", "--port", "1"])
    assert argv[:4] == [procs.shutil.which("setpriv"), "--pdeathsig", "KILL", "--"]
    assert argv[4:] == ["redis-server", "--port", "1"]


def test_without_setpriv_the_dropped_promise_is_said(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(procs.shutil, "which", lambda _name: None)
    monkeypatch.setattr(procs, "_warned_no_setpriv", False)
    assert with_pdeathsig(["x"]) == ["x"]
    assert "util-linux" in capsys.readouterr().err


@pytest.mark.stack
def test_a_child_dies_with_a_sigkilled_lab(tmp_path: Path) -> None:
    # A "lab" process that starts a member, then is SIGKILLed: the member must not outlive it.
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from lab.procs import Proc
        argv = [sys.executable, "-c", "import time; time.sleep(120)"]
        p = Proc("sleeper", argv, {{}}, Path({str(tmp_path)!r}) / "s.log")
        p.start()
        print(p.pid, flush=True)
        time.sleep(120)
        """
    )
    lab = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        child = int(lab.stdout.readline())
        assert psutil.Process(child).status() != psutil.STATUS_ZOMBIE
        lab.send_signal(signal.SIGKILL)
        lab.wait(10)
        wait_until(lambda: not psutil.pid_exists(child), timeout=10, what="the member to die with the lab")
    finally:
        lab.kill()
        lab.wait(5)
    assert not recorded_alive(tmp_path)


@pytest.mark.stack
def test_a_port_taken_between_choosing_and_binding_is_chosen_again(tmp_path: Path, monkeypatch) -> None:
    with squatted_port() as port:
        picks = iter([port])
        real = procs.free_port
        monkeypatch.setattr(procs, "free_port", lambda host="127.0.0.1": next(picks, None) or real(host))
        proc, got = start_redis_server("redis", tmp_path / "r", tmp_path / "logs" / "redis.log")
    try:
        assert got != port
        assert redis.Redis(port=got).ping()
        assert "Address already in use" in (tmp_path / "logs" / "redis.log").read_text()  # the lost race happened
    finally:
        proc.stop(timeout=5)


@pytest.mark.stack
def test_recorded_alive_finds_a_running_member_and_not_a_stopped_one(tmp_path: Path) -> None:
    p = Proc("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], dict(os.environ), tmp_path / "s.log")
    p.start()
    try:
        assert recorded_alive(tmp_path) == [f"sleeper (pid {p.pid}, {tmp_path})"]
    finally:
        p.stop(timeout=5)
    assert recorded_alive(tmp_path) == []
