"""The `lab` CLI as a user runs it: `lab up`, curl, Ctrl-C; bad settings; missing binaries."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from lab.procs import wait_until
from lab.profiles import ROOT
from lab.rundirs import results_dir
from tests.support import unique_email, wait_task

LAB = str(Path(sys.executable).with_name("lab"))
# Every test runs `lab` as a subprocess (seconds of imports each); several start a whole Stack.
pytestmark = pytest.mark.stack


def run_lab(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([LAB, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


@pytest.mark.parametrize("sigint_ignored", [False, True], ids=["terminal", "background-job"])
def test_up_serves_then_ctrl_c_leaves_nothing(tmp_path: Path, sigint_ignored: bool) -> None:
    # A non-interactive shell starts `lab up &` with SIGINT ignored; `trap "" INT; exec` reproduces that, and
    # `lab up` must install its own handler so Ctrl-C / kill -INT still stops everything.
    # The terminal case without Prometheus and the exporter: the signal handling is the same, the run shorter.
    argv = [LAB, "up", "--no-flower"] + ([] if sigint_ignored else ["--no-prometheus"])
    if sigint_ignored:
        argv = ["bash", "-c", 'trap "" INT; exec "$0" "$@"', *argv]
    proc = subprocess.Popen(
        argv,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        run_dir = wait_until(
            lambda: _run_dir_of(proc.pid),
            timeout=120,
            what="lab up to write stack.json",
            abort=lambda: None if proc.poll() is None else f"lab up exited {proc.returncode}",
        )
        state = json.loads((run_dir / "stack.json").read_text())
        pids = [m["pid"] for m in state["members"].values()]
        pids += [c for w in state["workers"].values() for c in w["pool_children"]]
        api = httpx.Client(base_url=state["urls"]["api"], timeout=10)
        email = unique_email("curl")
        resp = api.post("/api/v1/users", json={"email": email, "name": "Ada"})
        assert resp.status_code == 201
        assert wait_task(api, resp.json()["welcome_task_id"])["status"] == "SUCCESS"
        msgs = httpx.get(state["urls"]["smtp_control"] + "/messages", params={"to": email}).json()
        assert len(msgs) == 1
        status = run_lab("status", "--json")
        assert status.returncode == 0
        assert any(s["run_dir"] == str(run_dir) for s in json.loads(status.stdout))
    finally:
        # Ctrl-C in a terminal signals the group; `kill -INT %1` in a script signals the job itself.
        (os.kill if sigint_ignored else os.killpg)(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    assert not alive, f"left running after Ctrl-C: {alive}"


def _run_dir_of(lab_pid: int) -> Path | None:
    for state in results_dir().glob("up-*/stack.json"):
        try:
            data = json.loads(state.read_text())
        except ValueError:
            continue
        if data.get("lab_pid") == lab_pid and data.get("workers"):
            return state.parent
    return None


def test_bad_setting_fails_with_one_line_naming_it() -> None:
    env = {**os.environ, "CELERY_WORKER_PREFETCH_MULTIPLIER": "abc"}
    res = run_lab("up", env=env)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "CELERY_WORKER_PREFETCH_MULTIPLIER='abc' is invalid" in lines[0]


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["up", "--api-port", "70000"], "--api-port"),
        (["up", "--api-port", "-1"], "--api-port"),
        (["up", "--workers", "0"], "--workers"),
        (["up", "--no-such-flag"], "--no-such-flag"),
        (["chaos", "run"], "experiment"),
        (["no-such-verb"], "no-such-verb"),
    ],
)
def test_a_bad_option_value_is_one_line_and_exit_2(args: list[str], names: str) -> None:
    # Before: `lab up --api-port 70000` ended in a 43-line OverflowError traceback with exit 1.
    res = run_lab(*args)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ") and names in lines[0]
    assert "--help" in lines[0]


def test_variables_that_look_like_settings_are_named_with_did_you_mean() -> None:
    env = {
        **os.environ,
        "CELERY_WORKR_CONCURRENCY": "3",  # a typo
        "WORKER_CONCURRENCY": "3",  # the prefix left out
        "LAB_RESULT_DIR": "/tmp/x",  # a typo of LAB_RESULTS_DIR
    }
    res = run_lab("up", "--config", "nosuch", env=env)  # the profile error stops it before anything starts
    assert res.returncode == 2
    err = " ".join(res.stderr.split())
    assert "CELERY_WORKR_CONCURRENCY is not a setting and is ignored; did you mean CELERY_WORKER_CONCURRENCY?" in err
    assert "WORKER_CONCURRENCY is ignored; did you mean CELERY_WORKER_CONCURRENCY?" in err
    assert "LAB_RESULT_DIR is not a setting and is ignored; did you mean LAB_RESULTS_DIR?" in err


def test_missing_redis_server_names_the_package(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    env = {**os.environ, "PATH": str(bindir)}
    res = run_lab("up", env=env)
    assert res.returncode == 2
    assert "redis-server not found" in res.stderr
    assert "apt-get install redis-server" in res.stderr


def test_unknown_profile_lists_the_known_ones() -> None:
    res = run_lab("up", "--config", "nosuch")
    assert res.returncode == 2
    assert "config profile 'nosuch' not found: choose one of" in res.stderr
    assert "reference" in res.stderr


def test_help_lists_the_verbs() -> None:
    res = run_lab("--help")
    assert res.returncode == 0
    for verb in ("up", "demo", "status", "load", "chaos", "bench", "dashboards", "report", "profiles"):
        assert verb in res.stdout


@pytest.mark.parametrize("args", [["--help"], ["chaos", "list"], ["profiles"], ["chaos", "--help"]])
def test_listing_verbs_work_whatever_celery_variables_say(args: list[str]) -> None:
    # Settings are validated when a Stack or the app is built, never at import.
    env = {**os.environ, "CELERY_WORKER_PREFETCH_MULTIPLIER": "abc"}
    res = run_lab(*args, env=env)
    assert res.returncode == 0, res.stderr
