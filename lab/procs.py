"""Processes the lab starts: free ports, PID-tracked children, deadline waits, clean stops.

Every child runs in its own session (so its PID is also its process-group id and a terminal Ctrl-C reaches
only the lab, which then stops children in order) and with PDEATHSIG set (so a SIGKILLed lab does not leave
it running). PDEATHSIG is set by util-linux's ``setpriv --pdeathsig``, which then execs the command (same PID),
rather than by a ``preexec_fn``: CPython documents ``preexec_fn`` as unsafe while other threads run, and the
lab always has some (rich's live display, HTTP clients). Stopping a child ends its whole process group,
which also reaps orphaned Celery pool children after a chaos experiment SIGKILLed their parent: everything is
found by recorded PID, never by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx
import psutil
import redis
from kombu.exceptions import OperationalError

from lab.errors import StackError

T = TypeVar("T")
P = TypeVar("P")
M = TypeVar("M")  # what a launch returns: a Proc, or a member made of several
# What a check may raise while what it waits for is not there yet (a server still starting, a connection
# refused): retried until the deadline. Anything else (a TypeError, a KeyError) is a bug and propagates.
NOT_YET: tuple[type[BaseException], ...] = (OSError, redis.RedisError, httpx.TransportError, OperationalError)
PORT_ATTEMPTS = 3
PID_RECORD = "pids.jsonl"
_warned_no_setpriv = False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def require_binary(name: str, package: str, extra_dirs: tuple[str, ...] = ()) -> str:
    """The binary's path, from PATH (and ``extra_dirs``, e.g. /usr/sbin for a non-root user)."""
    path = shutil.which(name) or next((str(Path(d) / name) for d in extra_dirs if (Path(d) / name).exists()), None)
    if path is None:
        raise StackError(
            f"{name} not found on PATH: install the Debian package '{package}' (apt-get install {package})"
        )
    return path


def wait_until(
    check: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.05,
    abort: Callable[[], str | None] | None = None,
    retry_on: tuple[type[BaseException], ...] = NOT_YET,
) -> T:
    """Poll ``check`` until it returns a truthy value, ``abort`` returns a reason, or the deadline passes.

    An exception of a ``retry_on`` type counts as "not yet" (and is named if the deadline passes); any other
    exception propagates at once, so a programming error is not turned into a long timeout."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = check()
            if result:
                return result
        except retry_on as exc:
            last_error = exc
        if abort is not None and (reason := abort()):
            raise StackError(f"{what}: {reason}")
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise StackError(f"timed out after {timeout:g}s waiting for {what}{detail}")
        time.sleep(interval)


def with_pdeathsig(argv: list[str]) -> list[str]:
    """``argv`` run so that it gets SIGKILL when the lab dies (``setpriv --pdeathsig KILL``, which execs it).

    Without setpriv the child still runs, but the promise is dropped: say so once, naming the package."""
    global _warned_no_setpriv
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        if not _warned_no_setpriv:
            _warned_no_setpriv = True
            print(
                "warning: setpriv not found (Debian package util-linux): children of the lab will not die with "
                "it if it is SIGKILLed",
                file=sys.stderr,
            )
        return argv
    return [setpriv, "--pdeathsig", "KILL", "--", *argv]


def port_taken(log_text: str) -> bool:
    return "address already in use" in log_text.lower() or "eaddrinuse" in log_text.lower()


def start_on_free_port(
    name: str, launch: Callable[[P], M], pick: Callable[[], P], attempts: int = PORT_ATTEMPTS
) -> tuple[M, P]:
    """Start a member on a port chosen by ``pick`` with ``launch(port)`` (which waits until it is ready).

    ``free_port()`` can only name a port that was free a moment ago: another process may bind it before the
    child does. When the child fails that way (its log says the address is in use), pick another port."""
    for _attempt in range(attempts):
        port = pick()
        try:
            return launch(port), port
        except StackError as exc:
            if not port_taken(str(exc)):
                raise
    raise StackError(f"could not find a free port for {name} after {attempts} attempts")


@dataclass
class Proc:
    """One child process, with its log file. ``pid`` is the process the command line names."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    cwd: Path | None = None
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    started_at: float = 0.0

    def start(self) -> Proc:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        try:
            self.popen = subprocess.Popen(
                with_pdeathsig(self.argv),
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        self.started_at = time.time()
        # Every PID the lab ever started, beside the logs: what a run left behind can be checked by recorded
        # PID (and start time, against PID reuse) after the fact, never by process name.
        with (self.log_path.parent / PID_RECORD).open("a") as record:
            record.write(json.dumps({"name": self.name, "pid": self.popen.pid, "started_at": self.started_at}) + "\n")
        return self

    @property
    def pid(self) -> int:
        if self.popen is None:
            raise StackError(f"{self.name} was never started")
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def died(self) -> str | None:
        """For ``wait_until(abort=...)``: why the process is gone, with its last log lines."""
        if self.popen is None or self.alive():
            return None
        return f"{self.name} exited with code {self.popen.returncode}; last log lines:\n{self.log_tail()}"

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def send(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def wait(self, timeout: float) -> bool:
        if self.popen is None:
            return True
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def kill_group(self) -> None:
        """SIGKILL everything left in this child's process group (orphaned pool children included)."""
        if self.popen is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)

    def stop(self, timeout: float = 10.0, sig: int = signal.SIGTERM) -> None:
        stop_all([self], timeout=timeout, sig=sig)


def recorded_alive(root: Path) -> list[str]:
    """Processes recorded in any ``pids.jsonl`` under ``root`` that still run (same PID, same start time)."""
    alive = []
    for record in root.rglob(PID_RECORD):
        for line in record.read_text().splitlines():
            entry = json.loads(line)
            with contextlib.suppress(psutil.NoSuchProcess):
                proc = psutil.Process(entry["pid"])
                if abs(proc.create_time() - entry["started_at"]) < 2 and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(f"{entry['name']} (pid {entry['pid']}, {record.parent})")
    return alive


def stop_all(procs: list[Proc], timeout: float = 10.0, sig: int = signal.SIGTERM) -> None:
    """Ask all to stop at once, give them ``timeout`` together, then SIGKILL their process groups."""
    running = [p for p in procs if p.popen is not None and p.alive()]
    for p in running:
        # A SIGSTOPped child (chaos pauses the broker) must be woken to act on the signal.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGCONT)
        p.send(sig)
    deadline = time.monotonic() + timeout
    for p in running:
        if not p.wait(max(0.0, deadline - time.monotonic())):
            p.kill_group()
            p.wait(5)
    for p in procs:
        p.kill_group()
        p.wait(1)


def launch_ready(proc: Proc, ready: Callable[[], object], *, timeout: float, what: str) -> Proc:
    """Start ``proc`` and wait until ``ready()`` holds; on any failure stop it (nothing is left running)."""
    proc.start()
    try:
        wait_until(ready, timeout=timeout, what=what, abort=proc.died)
    except BaseException:
        proc.stop(timeout=2)
        raise
    return proc


def start_redis_server(
    name: str, data_dir: Path, log_path: Path, *, aof: bool = False, ready_timeout: float = 60.0
) -> tuple[Proc, int]:
    """A redis-server of the lab's own on a free port (the Stack's broker, a chaos ledger): running, answering
    PING, persistence off unless ``aof``. Retries when another process takes the port first."""
    binary = require_binary("redis-server", "redis-server")
    data_dir.mkdir(parents=True, exist_ok=True)

    def launch(port: int) -> Proc:
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir), "--save", ""]
        argv += ["--appendonly", "yes" if aof else "no", "--daemonize", "no", "--protected-mode", "yes"]
        proc = Proc(name, [*argv, "--logfile", ""], dict(os.environ), log_path)
        client = redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1)
        try:
            return launch_ready(proc, client.ping, timeout=ready_timeout, what=f"{name} (redis-server)")
        finally:
            client.close()

    return start_on_free_port(f"{name} (redis-server)", launch, free_port)
